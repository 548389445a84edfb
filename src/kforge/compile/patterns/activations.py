"""SwiGLU's silu(gate) * up over the halves of one projection, and softmax over the last dim."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.fx import Node

from kforge.compile.graph import arg, canon, dtype, last_dim, only_user, the_other, val
from kforge.compile.patterns.base import Match, Pattern, Reject
from kforge.specs.softmax import DTYPES


def _half_of(node) -> tuple[Node, int] | None:
    """(t, 0 or 1) when `node` is the first or second half of t's last dim by chunk or split."""
    if canon(node) != "getitem" or canon(arg(node, "input")) not in ("chunk", "split"):
        return None
    index, parts = arg(node, "index"), arg(node, "input")
    t = arg(parts, "input")
    tv = val(t)
    if not isinstance(tv, torch.Tensor) or tv.dim() < 1 or not last_dim(arg(parts, "dim"), tv.dim()):
        return None
    n = tv.shape[-1]
    if type(n) is not int or n % 2:
        return None
    if canon(parts) == "chunk":
        halves = arg(parts, "chunks") == 2
    else:
        size = arg(parts, "split_size_or_sections")
        halves = size == n // 2 or (isinstance(size, (list, tuple)) and list(size) == [n // 2, n // 2])
    return (t, index) if halves and index in (0, 1) else None


def match_silu_and_mul(silu: Node) -> Match | Reject:
    if arg(silu, "inplace"):
        return Reject("silu(..., inplace=True)")
    mul = only_user(silu)
    if canon(mul) != "mul":
        return Reject("silu's result is not (only) multiplied by another tensor")
    gate, up = arg(silu, "input"), the_other(mul, silu)
    g, u = _half_of(gate), _half_of(up)
    if g is None or u is None or g[0] is not u[0]:
        return Reject("silu(a) * b where a and b are not the two halves of one tensor's last dim "
                      "(kforge.silu_and_mul takes the fused gate/up projection)")
    if (g[1], u[1]) != (0, 1):
        return Reject("silu gates the second half; kforge.silu_and_mul gates the first")
    t = g[0]
    tv = val(t)
    if tv.dtype not in DTYPES:
        return Reject(f"the projection is {tv.dtype}, not one of kforge's float dtypes")
    if dtype(mul) != tv.dtype or val(mul).shape != (*tv.shape[:-1], tv.shape[-1] // 2):
        return Reject(f"the product is {dtype(mul)} {tuple(val(mul).shape)}, not the halves' dtype and shape")
    return Match("silu_and_mul", (t,), (mul,), frozenset({silu, mul}), silu,
                 note=f"rounded once (the eager graph rounds silu(a) to {tv.dtype} before the product)"
                 if tv.dtype not in (torch.float32, torch.float64) else "")


def match_softmax(node: Node) -> Match | Reject:
    x_node = arg(node, "input")
    x = val(x_node)
    if not isinstance(x, torch.Tensor) or x.dtype not in DTYPES or x.dim() < 1:
        return Reject(f"input is {getattr(x, 'dtype', None)}, not one of kforge's float dtypes")
    dim = arg(node, "dim")
    if not last_dim(dim, x.dim()):
        return Reject(f"softmax over dim {dim}, not the last")
    if dtype(node) != x.dtype:
        return Reject(f"dtype={dtype(node)} changes the result's dtype from the input's {x.dtype} "
                      "(kforge.softmax keeps it)")
    return Match("softmax", (x_node,), (node,), frozenset({node}), node)


def _swiglu_example(x):
    gate, up = x.chunk(2, -1)
    return F.silu(gate) * up


def _softmax_example(x):
    return torch.softmax(x, -1)


PATTERNS = (
    Pattern("swiglu", "silu_and_mul", "silu", match_silu_and_mul,
            "F.silu(a) * b with a, b = t.chunk(2, -1) or t.split(d, -1)", example=_swiglu_example),
    Pattern("softmax", "softmax", "softmax", match_softmax,
            "torch.softmax / F.softmax / x.softmax over the last dim, result in the input's dtype",
            example=_softmax_example),
)
