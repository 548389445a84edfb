"""The MoE router: top-k of a softmax over the experts, optionally renormalised (Mixtral, Qwen-MoE)."""
from __future__ import annotations

from typing import Any

import torch
from torch.fx import Node

from kforge.compile.graph import arg, canon, cast_source, dtype, last_dim, only_user, operands, val
from kforge.compile.patterns.base import Match, Pattern, Reject
from kforge.specs.topk_softmax import DTYPES, accumulate_dtype


def _exact_cast(frm: torch.dtype, to: torch.dtype) -> bool:
    """Whether converting `frm` to `to` keeps every value (same dtype, or up to fp32/fp64)."""
    return frm == to or (to in (torch.float32, torch.float64) and torch.finfo(frm).bits <= torch.finfo(to).bits)


def _logits(softmax: Node, compute: torch.dtype) -> tuple[Any, list[Node]]:
    """The softmax's input with exact up-conversions stripped while kforge would still compute in
    `compute` from it (bf16 logits.float() -> the bf16 logits); a cast also used elsewhere stays."""
    x, casts, user = arg(softmax, "input"), [], softmax
    while (src := cast_source(x)) is not None and only_user(x) is user:
        if dtype(src) not in DTYPES or not _exact_cast(dtype(src), dtype(x)) \
                or accumulate_dtype(dtype(src)) != compute:
            break
        casts.append(x)
        user, x = x, src
    return x, casts


def _getitems(topk: Node) -> tuple[Node | None, Node | None] | Reject:
    """(the values node, the indices node) among topk's users; None for one nobody reads."""
    picked: dict[int, Node] = {}
    for user in topk.users:
        index = arg(user, "index") if canon(user) == "getitem" else None
        if index not in (0, 1):
            return Reject(f"topk's result is used whole by {user.name}, not as (values, indices)")
        if index in picked:
            return Reject(f"topk's output {index} is read twice ({picked[index].name}, {user.name})")
        picked[index] = user
    return picked.get(0), picked.get(1)


def _renormalised(w: Node) -> tuple[Node, Node] | str | None:
    """(sum, div) for w / w.sum(-1, keepdim=True) (or `w /= ...`) when those are w's only users;
    a string saying why a division of w by its sum is not the op's renormalisation; None when
    there is no such division."""
    users = list(w.users)
    total = next((u for u in users if canon(u) == "sum" and arg(u, "input") is w), None)
    if total is None:
        return None
    div = only_user(total)
    a, b = operands(div) if canon(div) == "div" else (None, None)
    if a is not w or b is not total:
        return None
    if arg(total, "dim") is None or not last_dim(arg(total, "dim"), val(w).dim()):
        return f"the weights are divided by their sum over dim {arg(total, 'dim')}, not the last"
    if arg(total, "keepdim") is not True or arg(total, "dtype") is not None:
        return "the weights are divided by a sum without keepdim=True (or with a dtype)"
    if arg(div, "rounding_mode") is not None:
        return f"the weights' division has rounding_mode={arg(div, 'rounding_mode')!r}"
    if set(users) != {total, div}:
        return "the weights before renormalisation are also used elsewhere"
    return total, div


def match_topk_softmax(topk: Node) -> Match | Reject:
    softmax = arg(topk, "input")
    if canon(softmax) != "softmax":
        return Reject(f"topk of {canon(softmax) or 'a tensor'}, not of a softmax")
    probs = val(softmax)
    if not isinstance(probs, torch.Tensor) or probs.dim() < 1:
        return Reject("the softmax's result is not a tensor")
    dim = arg(softmax, "dim")
    if dim is None or not last_dim(dim, probs.dim()):
        return Reject(f"softmax over dim {dim}, not the last (the experts)")
    if not last_dim(arg(topk, "dim"), probs.dim()):
        return Reject(f"topk over dim {arg(topk, 'dim')}, not the last (the experts)")
    if arg(topk, "largest") is not True:
        return Reject("topk(largest=False) picks the smallest probabilities")
    if not isinstance(arg(topk, "sorted"), bool):
        return Reject("topk's sorted is not a constant bool")
    k = arg(topk, "k")
    if type(k) is not int:
        what = "computed in the graph (a symbolic size?)" if isinstance(k, Node) else type(k).__name__
        return Reject(f"k is {what}, not a constant int")
    if only_user(softmax) is not topk:
        others = [u.name for u in softmax.users if u is not topk]
        return Reject(f"the softmax's probabilities are also used by {', '.join(others)} (an aux loss?): "
                      "kforge.topk_softmax returns only the top k")
    s_in = arg(softmax, "input")
    if dtype(s_in) not in DTYPES:
        return Reject(f"the logits are {dtype(s_in)}, not one of {[str(d) for d in DTYPES]}")
    result = probs.dtype  # eager computes in accumulate_dtype(result) and rounds to result
    if not _exact_cast(dtype(s_in), result):
        return Reject(f"softmax(dtype={result}) rounds the {dtype(s_in)} logits before it")
    compute = accumulate_dtype(result)
    if accumulate_dtype(dtype(s_in)) != compute:
        return Reject(f"softmax in {result} of {dtype(s_in)} logits: kforge.topk_softmax computes in "
                      f"{accumulate_dtype(dtype(s_in))} for them")
    x, upcasts = _logits(softmax, compute)
    picked = _getitems(topk)
    if isinstance(picked, Reject):
        return picked
    weights, indices = picked
    covered = {topk, softmax, *upcasts, *(n for n in picked if n is not None)}
    renormalize, note = False, []
    out = weights
    if weights is not None:
        renorm = _renormalised(weights)
        if isinstance(renorm, tuple):
            renormalize, out = True, renorm[1]
            covered.update(renorm)
        elif isinstance(renorm, str):
            note.append(renorm + ": left in the graph")
        # A conversion of the op's own result is exact: it is absorbed into the output cast. One
        # of an already rounded (bf16) result is not, and stays.
        while dtype(out) == compute and (user := only_user(out)) is not None and cast_source(user) is out:
            covered.add(user)
            out = user
    if result != compute:
        note.append(f"probabilities computed in {compute} and rounded once to {result} (the eager graph "
                    f"picks the top k among rounded ones, so ties may break differently)")
    casts = (dtype(out) if out is not None and dtype(out) != compute else None,
             torch.int64 if indices is not None else None)
    return Match("topk_softmax", (x, k, renormalize), (out, indices), frozenset(covered), topk, casts=casts,
                 note="; ".join(note))


PATTERNS = (
    Pattern("moe-router", "topk_softmax", "topk", match_topk_softmax,
            "torch.topk(softmax(logits, -1[, dtype=float32]), k, -1), optionally w / w.sum(-1, keepdim=True) "
            "(or w /= ...) and .to(dtype) after it; int64 indices"),
)
