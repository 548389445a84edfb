"""HF's rotary embedding, q * cos + rotate_half(q) * sin with k alongside, as one kforge.rotary_embedding.

HF (Llama, Mistral, Qwen, Phi, GPT-NeoX) rotates the query and the key with the same cos and sin,
(batch, seq, head_dim) each, built as `cat((freqs, freqs), -1).cos()`: both halves of a head share
one frequency, which is what makes the sum kforge's neox rotation, one (cos, sin) per pair. That
is proved from the graph (`_doubled`), never assumed. The rewrite flattens q and k to (tokens,
heads, head_dim), gathers each token's first halves of cos and sin into the op's cache with
positions = arange(tokens), and moves the results back to q's and k's layout.
"""
from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Any

import torch
from torch.fx import Node
from torch.fx.experimental.symbolic_shapes import statically_known_true

from kforge.compile.graph import arg, canon, cast_source, last_dim, only_user, operands, the_other, val
from kforge.compile.patterns.base import Match, Pattern, Reject
from kforge.specs.rotary_embedding import DTYPES, accumulate_dtype

_FULL = slice(None)


def _eq(a: Any, b: Any) -> bool:
    """a == b for sizes that may be symbolic, adding no guard: what is not known counts as unequal."""
    if type(a) is int and type(b) is int:
        return a == b
    return statically_known_true(a == b)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _pieces(n: int, op: str, size: Any) -> list[int] | None:
    """The lengths torch.chunk(n-long, size) / torch.split(n-long, size) cut a dim into."""
    if op == "chunk":
        if type(size) is not int or size < 1:
            return None
        step = -(-n // size)  # torch.chunk: pieces of ceil(n / chunks), the last one shorter
    elif type(size) is int and size > 0:
        step = size
    elif isinstance(size, (list, tuple)) and all(type(s) is int for s in size) and sum(size) == n:
        return list(size)
    else:
        return None
    return [min(step, n - i) for i in range(0, n, step)]


def _range(node: Any) -> tuple[Node, int, int] | None:
    """(t, start, stop) when `node` is t[..., start:stop] over t's last dim: a basic slice, or a
    piece of t.chunk(c, -1) / t.split(s, -1)."""
    if canon(node) != "getitem":
        return None
    src, index = arg(node, "input"), arg(node, "index")
    pieced = canon(src) in ("chunk", "split")
    t = arg(src, "input") if pieced else src
    tv = val(t)
    if not isinstance(t, Node) or not isinstance(tv, torch.Tensor) or tv.dim() < 1 or type(tv.shape[-1]) is not int:
        return None
    n = tv.shape[-1]
    if pieced:
        size = arg(src, "chunks") if canon(src) == "chunk" else arg(src, "split_size_or_sections")
        sizes = _pieces(n, canon(src), size) if n > 0 and last_dim(arg(src, "dim"), tv.dim()) else None
        if sizes is None or type(index) is not int or not -len(sizes) <= index < len(sizes):
            return None
        index %= len(sizes)
        start = sum(sizes[:index])
        return t, start, start + sizes[index]
    parts = index if isinstance(index, tuple) else (index,)
    last, lead = parts[-1], parts[:-1]
    if not isinstance(last, slice) or not all(p is Ellipsis or p == _FULL for p in lead):
        return None
    if Ellipsis not in lead and len(parts) != tv.dim():
        return None  # the slice is not on the last dim
    bounds = (last.start, last.stop, last.step)
    if any(b is not None and type(b) is not int for b in bounds) or last.step not in (None, 1):
        return None
    start, stop, _ = last.indices(n)
    return t, start, max(start, stop)


def _rotate_half(cat: Node) -> tuple[Node, int, set[Node]] | Reject:
    """(x, sign, nodes) for cat((-x2, x1), -1), HF's rotate_half (sign 1), or cat((x2, -x1), -1)
    (sign -1: the inverse rotation, which is the op's with sin negated); x1, x2 the halves of x's
    last dim by slicing, chunk or split. Negation is exact, so both are exactly the op."""
    parts, out = arg(cat, "tensors"), val(cat)
    if not isinstance(parts, (list, tuple)) or len(parts) != 2 or not isinstance(out, torch.Tensor) \
            or not last_dim(arg(cat, "dim"), out.dim()):
        return Reject("the product's cat is not of two tensors along the last dim (rotate_half's cat((-x2, x1), -1))")
    if type(out.shape[-1]) is not int:
        return Reject(f"the head dim {out.shape[-1]} is symbolic: the rewrite needs it static (it is, in a model "
                      "that views its projections to a configured head_dim)")
    nodes, pieces = {cat}, []
    for p in parts:
        negated = canon(p) == "neg"
        if negated:
            nodes.add(p)
            p = arg(p, "input")
        r = _range(p)
        if r is None:
            return Reject("rotate_half's cat joins something other than two slices (or chunks) of one tensor's "
                          "last dim")
        nodes.add(p)
        pieces.append((r, negated))
    ((x, a0, a1), neg_a), ((xb, b0, b1), neg_b) = pieces
    if x is not xb:
        return Reject("rotate_half's cat joins slices of two different tensors")
    n = val(x).shape[-1]
    if n % 2 or {(a0, a1), (b0, b1)} != {(0, n // 2), (n // 2, n)}:
        return Reject(f"rotate_half's cat joins [{a0}:{a1}] and [{b0}:{b1}] of a last dim of {n}, not its two halves")
    if a0 == 0:
        return Reject("rotate_half's cat keeps the halves in place (x1 first): rotate_half swaps them, "
                      "cat((-x2, x1), -1)")
    if neg_a == neg_b:
        return Reject(f"rotate_half negates {'both halves' if neg_a else 'neither half'}: not a rotation "
                      "(cat((-x2, x1), -1) negates x2 alone)")
    return x, (1 if neg_a else -1), nodes


def _elementwise_source(node: Node) -> Any:
    """The tensor `node` is computed from when each row's halves stay equal through it: cos, sin,
    negation, a product with or quotient by a constant number, unsqueeze or None-indexing that
    leaves the last dim in place; None for anything else."""
    op = canon(node)
    if op in ("cos", "sin", "neg", "unsqueeze"):
        src = arg(node, "input")
    elif op in ("mul", "div"):
        a, b = operands(node)
        if op == "mul" and _number(a):
            a, b = b, a
        if not _number(b) or (op == "div" and arg(node, "rounding_mode") is not None):
            return None
        src = a
    elif op == "getitem":
        index = arg(node, "index")
        parts = index if isinstance(index, tuple) else (index,)
        if not all(p is None or p is Ellipsis or p == _FULL for p in parts):
            return None
        src = arg(node, "input")
    else:
        return None
    sv, out = val(src), val(node)
    # A new dim put last (unsqueeze(-1), x[..., None]) has size 1, never the even width it displaces.
    if not isinstance(sv, torch.Tensor) or not isinstance(out, torch.Tensor) or sv.dim() < 1 or out.dim() < 1 \
            or not _eq(sv.shape[-1], out.shape[-1]):
        return None
    return src


def _doubled(node: Any, name: str) -> Reject | None:
    """None when `node`'s last dim is two equal halves by construction: cat((f, f), -1) of one f,
    then only steps that keep them equal (casts and `_elementwise_source`'s)."""
    while True:
        if canon(node) == "cat":
            parts = arg(node, "tensors")
            if isinstance(parts, (list, tuple)) and len(parts) == 2 and isinstance(parts[0], Node) \
                    and parts[0] is parts[1] and last_dim(arg(node, "dim"), val(node).dim()):
                return None
            return Reject(f"{name} comes from a cat that is not cat((f, f), -1) of one tensor twice: its halves "
                          f"may differ, and kforge.rotary_embedding takes one {name} per pair of dims")
        src = cast_source(node)
        if src is None:
            src = _elementwise_source(node)
        if src is None:
            return Reject(f"{name} is not traced back to cat((f, f), -1) (it stops at {node.name}): its two halves "
                          f"are not known to be equal, and kforge.rotary_embedding takes one {name} per pair of dims")
        node = src


@dataclasses.dataclass(frozen=True)
class _Side:
    """One rotated tensor: add = x * cos + rotate_half(x) * sin, in any operand order."""

    add: Node
    x: Node
    cos: Node
    sin: Node
    sign: int  # 1: rotate_half is cat((-x2, x1)); -1: cat((x2, -x1))
    nodes: frozenset[Node]


def _rotation(add: Node, rot_prod: Node, cat: Node) -> _Side | Reject:
    found = _rotate_half(cat)
    if isinstance(found, Reject):
        return found
    x, sign, nodes = found
    sin, x_prod = the_other(rot_prod, cat), the_other(add, rot_prod)
    cos = the_other(x_prod, x) if x_prod is not rot_prod else None
    if cos is None:
        return Reject("rotate_half(x) * sin is added to a product that is not x * cos with the same x")
    if arg(add, "alpha") != 1:
        return Reject(f"the sum has alpha={arg(add, 'alpha')}")
    xv, cv, sv, out = val(x), val(cos), val(sin), val(add)
    if not isinstance(cv, torch.Tensor) or not isinstance(sv, torch.Tensor):
        return Reject("cos or sin is not a tensor")
    if xv.dtype not in DTYPES:
        return Reject(f"x is {xv.dtype}, not one of kforge's float dtypes")
    if out.dtype != xv.dtype:
        return Reject(f"the sum is {out.dtype}, not x's {xv.dtype}: cos ({cv.dtype}) and sin ({sv.dtype}) promote "
                      "the products, and kforge.rotary_embedding returns x's dtype")
    if out.shape != xv.shape:
        return Reject(f"cos or sin broadcasts x {tuple(xv.shape)} to {tuple(out.shape)}")
    if not _eq(cv.shape[-1], xv.shape[-1]) or not _eq(sv.shape[-1], xv.shape[-1]):
        return Reject(f"cos {tuple(cv.shape)} or sin {tuple(sv.shape)} does not span x's last dim {xv.shape[-1]}")
    why = _doubled(cos, "cos") or _doubled(sin, "sin")
    if why:
        return why
    return _Side(add, x, cos, sin, sign, frozenset({add, rot_prod, x_prod} | nodes))


def _side(add: Node) -> _Side | Reject | None:
    """The rotation `add` computes, a Reject for a near miss, or None when `add` is no candidate at
    all (not a sum of two products, one of them by a cat): the graph's other adds go unreported."""
    prods = operands(add)
    if not all(canon(p) == "mul" for p in prods):
        return None
    first = None
    for rot_prod, cat in [(p, r) for p in prods for r in operands(p) if canon(r) == "cat"]:
        found = _rotation(add, rot_prod, cat)
        if isinstance(found, _Side):
            return found
        first = first or found
    return first


def _same(a: Any, b: Any) -> bool:
    """Whether a and b are one value: one node, or one view, cast or scaling of it (a model may
    unsqueeze cos separately for q and for k)."""
    if a is b:
        return True
    if not isinstance(a, Node) or not isinstance(b, Node) or (a.op, a.target) != (b.op, b.target) \
            or canon(a) not in ("unsqueeze", "cast", "getitem", "mul", "div", "neg") \
            or len(a.args) != len(b.args) or a.kwargs != b.kwargs:
        return False
    return all(_same(x, y) if isinstance(x, Node) else x == y for x, y in zip(a.args, b.args))


def _depends(a: Node, b: Node) -> bool:
    """Whether `a` is computed from `b`."""
    stack, seen = [a], set()
    while stack:
        n = stack.pop()
        if n is b:
            return True
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return False


def _partner(side: _Side, order: dict[Node, int]) -> _Side | Reject:
    """The other tensor rotated with the same cos and sin, independent of this one (not the next
    layer's query); the nearest in the graph when there are several."""
    others = []
    for n in side.add.graph.nodes:
        if n is not side.add and n.users and canon(n) == "add":
            s = _side(n)
            if isinstance(s, _Side) and s.x is not side.x:
                others.append(s)
    same = [s for s in others if _same(s.cos, side.cos) and _same(s.sin, side.sin) and s.sign == side.sign]
    for s in sorted(same, key=lambda s: abs(order[s.add] - order[side.add])):
        if not _depends(s.add, side.add) and not _depends(side.add, s.add):
            return s
    if same:
        return Reject("every other tensor rotated with these cos and sin depends on this one's result (another "
                      "layer's): no key to rotate alongside it in one kforge.rotary_embedding call")
    if any(_same(s.cos, side.cos) or _same(s.sin, side.sin) for s in others):
        return Reject("the other rotated tensor has a different cos or sin (or rotates the other way): "
                      "kforge.rotary_embedding rotates a query and a key with one cos/sin cache")
    return Reject("only one tensor is rotated with these cos and sin (no key alongside): kforge.rotary_embedding "
                  "rotates a query and a key together")


def _whole_heads(side: _Side) -> tuple[Node, Node, frozenset[Node]] | None:
    """(t, joined, nodes) for HF's partial rotary (Phi, GPT-NeoX): x = t[..., :r] and the sum joined
    back as cat((sum, t[..., r:]), -1); the op then rotates t's first r dims and passes the rest."""
    r, joined = _range(side.x), only_user(side.add)
    if r is None or r[1] != 0 or canon(joined) != "cat" or not last_dim(arg(joined, "dim"), val(joined).dim()):
        return None
    t, _, stop = r
    parts = arg(joined, "tensors")
    if not isinstance(parts, (list, tuple)) or len(parts) != 2 or parts[0] is not side.add \
            or _range(parts[1]) != (t, stop, val(t).shape[-1]):
        return None
    nodes = side.nodes | {side.x, parts[1], joined}
    if any(u not in nodes for u in (*side.x.users, *parts[1].users)):
        return None  # a slice is used elsewhere: rotate the slices as they are
    return t, joined, nodes


def _heads_dim(q, k, cos, sin) -> int | Reject:
    """The dim of q and k (fake tensors) the op treats as heads: one that cos and sin broadcast
    over, q and k agreeing on every other dim but the last (those are the tokens)."""
    n = q.dim()
    if n < 3 or k.dim() != n:
        return Reject(f"q and k are {q.dim()}-D and {k.dim()}-D: the rewrite takes (..., heads, head_dim) "
                      "tensors of one rank, at least 3")
    c, s = ((1,) * (n - t.dim()) + tuple(t.shape) for t in (cos, sin))
    fits = [h for h in range(n - 1) if _eq(c[h], 1) and _eq(s[h], 1)
            and all(_eq(q.shape[j], k.shape[j]) for j in range(n - 1) if j != h)]
    if not fits:
        return Reject(f"no heads dim: cos {tuple(cos.shape)} and sin {tuple(sin.shape)} must broadcast over one dim "
                      f"of q {tuple(q.shape)} and k {tuple(k.shape)}, which agree on every other")
    # The dim where q and k differ (grouped-query heads) when there is one, else the widest.
    return max(fits, key=lambda h: (not _eq(q.shape[h], k.shape[h]), q.shape[h] if type(q.shape[h]) is int else 0,
                                    -h))


def _emit(q: Node, k: Node, cos: Node, sin: Node, h: int, sign: int, cache_dtype: torch.dtype, tokens: Any,
          outs: tuple[Node, Node], graph, args, call) -> tuple[Node, Node]:
    n, half = val(q).dim(), val(cos).shape[-1] // 2

    def method(name, *a):
        return graph.call_method(name, a)

    def heads_second_last(t):
        return t if h == n - 2 else method("movedim", t, h, -2)

    q_moved, k_moved = heads_second_last(q), heads_second_last(k)
    q3, k3 = method("flatten", q_moved, 0, -3), method("flatten", k_moved, 0, -3)  # (tokens, heads, head_size)
    # One head of q's first half-width: cos and sin expand to it, one row per token in q's token
    # order, without naming sizes that may be symbolic.
    one_head = method("narrow", method("narrow", q, h, 0, 1), -1, 0, half)

    def rows(t):  # (tokens, half)
        first = graph.call_function(operator.getitem, (t, (Ellipsis, slice(None, half))))
        return method("flatten", heads_second_last(method("expand_as", first, one_head)), 0, -2)

    sin_rows = rows(sin) if sign == 1 else method("neg", rows(sin))
    cache = graph.call_function(torch.cat, ((rows(cos), sin_rows), -1))  # (tokens, rot_dim)
    if cache_dtype != torch.promote_types(val(cos).dtype, val(sin).dtype):
        cache = method("to", cache, cache_dtype)
    if type(tokens) is not int:
        tokens = method("size", q3, 0)
    positions = graph.call_function(torch.arange, (tokens,), {"dtype": torch.int64, "device": val(q).device})
    q_out, k_out = call(q3, k3, positions, cache, True)

    def back(out, moved, eager):
        out = method("view_as", out, moved)
        if h == n - 2:
            return out
        out = method("movedim", out, -2, h)
        # Eager's sum is contiguous when q is (a contiguous (batch, heads, seq, dim), say); the
        # moved-back view is not, and a later .view() of it would fail.
        return method("contiguous", out) if val(eager).is_contiguous() else out

    return back(q_out, q_moved, outs[0]), back(k_out, k_moved, outs[1])


def match_rotary(add: Node) -> Match | Reject | None:
    """One kforge.rotary_embedding call for the rotated pair `add` belongs to, q and k of any rank
    >= 3 with a heads dim that cos and sin broadcast over ((batch, heads, seq, head_dim) or (batch,
    seq, heads, head_dim)). The Match's args are fake tensors of the call (the router plans from
    them); its `emit` builds the real ones from q, k, cos and sin in the graph."""
    side = _side(add)
    if not isinstance(side, _Side):
        return side
    order = {n: i for i, n in enumerate(add.graph.nodes)}
    other = _partner(side, order)
    if isinstance(other, Reject):
        return other
    if order[other.add] < order[add]:
        back = _partner(other, order)
        if isinstance(back, _Side) and back.add is add:
            # The pair's first add was matched first (anchors go in graph order) and, still used,
            # was left alone for a reason already reported: one entry per pair.
            return None
    first, second = sorted((side, other), key=lambda s: order[s.add])
    wholes = [_whole_heads(first), _whole_heads(second)]
    if all(wholes) and _eq(val(wholes[0][0]).shape[-1], val(wholes[1][0]).shape[-1]):
        (q, q_out, q_nodes), (k, k_out, k_nodes) = wholes
    else:
        (q, q_out, q_nodes), (k, k_out, k_nodes) = ((s.x, s.add, s.nodes) for s in (first, second))
    qv, kv, cv, sv = val(q), val(k), val(first.cos), val(first.sin)
    if kv.dtype != qv.dtype:
        return Reject(f"the rotated tensors are {qv.dtype} and {kv.dtype}: kforge.rotary_embedding takes one dtype")
    h = _heads_dim(qv, kv, cv, sv)
    if isinstance(h, Reject):
        return h
    # Casting cos and sin up is exact: the products already promote them to x's dtype.
    cache_dtype = torch.promote_types(cv.dtype, sv.dtype)
    if cache_dtype not in (torch.float32, qv.dtype):
        cache_dtype = accumulate_dtype(qv.dtype)
    # What the op will be called with, as fake tensors: routing plans from these.
    qf, kf = (t.movedim(h, -2).flatten(0, -3) for t in (qv, kv))
    tokens = qf.shape[0]
    positions = qf.new_empty((tokens,), dtype=torch.int64)
    fakes = (qf, kf, positions, qf.new_empty((tokens, cv.shape[-1]), dtype=cache_dtype), True)
    notes = []
    if qv.dtype not in (torch.float32, torch.float64):
        notes.append(f"rounded once (the eager graph rounds each product and the sum to {qv.dtype})")
    if first.sign == -1:
        notes.append("rotate_half written cat((x2, -x1)): the inverse rotation, sin negated in the cache")
    emit = functools.partial(_emit, q, k, first.cos, first.sin, h, first.sign, cache_dtype, tokens, (q_out, k_out))
    return Match("rotary_embedding", fakes, (q_out, k_out), frozenset(q_nodes | k_nodes), add, note="; ".join(notes),
                 emit=emit)


PATTERNS = (
    Pattern("rotary", "rotary_embedding", "add", match_rotary,
            "HF's q * cos + rotate_half(q) * sin and the same for k, cos and sin from cat((freqs, freqs), -1) "
            "(any operand order, unsqueeze_dim 1 or 2, partial rotary joined back by cat)"),
)
