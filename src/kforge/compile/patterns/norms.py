"""RMSNorm (torch's and the hand-written Llama one), the residual add before it, and LayerNorm."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.fx import Node

from kforge.compile.graph import arg, canon, cast_source, dtype, last_dim, only_user, operands, \
    the_other, val
from kforge.compile.patterns.base import Match, Pattern, Reject
from kforge.specs.rms_norm import DTYPES

_WIDER = {torch.float32: 1, torch.float64: 2}  # casts to these lose nothing from kforge's input dtypes


def _widening_source(node: Any) -> tuple[Any, list[Node]]:
    """`node` with exact up-conversions (to fp32 or fp64 from a narrower float) stripped."""
    casts = []
    while (src := cast_source(node)) is not None:
        to, frm = dtype(node), dtype(src)
        if to not in _WIDER or torch.finfo(frm).bits > torch.finfo(to).bits:
            break
        casts.append(node)
        node = src
    return node, casts


def _hidden_vector(name: str, node: Any, hidden: int) -> Reject | None:
    v = val(node)
    if not isinstance(v, torch.Tensor):
        return Reject(f"{name} is not a tensor")
    if tuple(v.shape) != (hidden,):
        return Reject(f"{name} has shape {tuple(v.shape)}, not ({hidden},)")
    if not v.dtype.is_floating_point:
        return Reject(f"{name} is {v.dtype}, not floating point")
    return None


def _normalized_last(node: Node, x) -> Reject | None:
    shape = arg(node, "normalized_shape")
    if isinstance(shape, int):
        shape = (shape,)
    if not isinstance(shape, (list, tuple, torch.Size)) or len(shape) != 1 or shape[0] != x.shape[-1]:
        return Reject(f"normalized_shape {shape} is not the last dim alone ({x.shape[-1]},)")
    return None


def _constant_eps_same_dtype(node: Node, eps: Any, x) -> Reject | None:
    """torch's norm calls: kforge's take eps as a constant and return x's dtype."""
    if not isinstance(eps, (float, int)) or isinstance(eps, bool):
        return Reject("eps is not a constant number")
    if dtype(node) != x.dtype:
        return Reject(f"the result is {dtype(node)}, not the input's {x.dtype}")
    return None


def _plain_input(name: str, x) -> Reject | None:
    if not isinstance(x, torch.Tensor) or x.dtype not in DTYPES or x.dim() < 1:
        return Reject(f"{name} is {getattr(x, 'dtype', type(x).__name__)}, not one of kforge's float dtypes")
    return None


def _with_residual_add(m: Match, x: Node, weight: Any, eps: float) -> Match:
    """rms_norm(a + b) becomes fused_add_rms_norm(a, b) -> (y, a + b) when the add is exact."""
    if canon(x) != "add" or arg(x, "alpha") != 1:
        return m
    a, b = operands(x)
    h = val(x)
    for t in (a, b):
        v = val(t)
        if not isinstance(v, torch.Tensor) or v.shape != h.shape or v.dtype != h.dtype:
            return m  # broadcasting or mixed dtypes: the add is not the op's residual step
    return Match("fused_add_rms_norm", (a, b, weight, eps), (m.replaces[0], x), m.nodes | {x}, m.anchor,
                 note=(m.note + "; " if m.note else "") + "the residual sum is normalised before it is rounded")


def _norm_call(node: Node, takes: str):
    """(x node, x, weight node) of torch's rms_norm / layer_norm call, or a Reject."""
    x_node, weight = arg(node, "input"), arg(node, "weight")
    x = val(x_node)
    why = _plain_input("input", x) or _normalized_last(node, x)
    if why:
        return why
    if weight is None:
        return Reject(f"no weight (elementwise_affine=False): kforge.{takes}")
    return _hidden_vector("weight", weight, x.shape[-1]) or (x_node, x, weight)


def match_torch_rms_norm(node: Node) -> Match | Reject:
    call = _norm_call(node, "rms_norm takes one")
    if isinstance(call, Reject):
        return call
    x_node, x, weight = call
    eps = arg(node, "eps")
    if eps is None:  # F.rms_norm's default: the eps of the type it computes in (fp32 for half types)
        eps = torch.finfo(torch.float64 if x.dtype == torch.float64 else torch.float32).eps
    why = _constant_eps_same_dtype(node, eps, x)
    if why:
        return why
    m = Match("rms_norm", (x_node, weight, float(eps)), (node,), frozenset({node}), node)
    return _with_residual_add(m, x_node, weight, float(eps))


def _squared(node: Any) -> Any:
    """x for x.pow(2), x ** 2, torch.square(x) and x * x; None otherwise."""
    op = canon(node)
    if op == "pow" and arg(node, "exponent") == 2:
        return arg(node, "input")
    if op == "square":
        return arg(node, "input")
    if op == "mul":
        a, b = operands(node)
        return a if a is b else None
    return None


def match_llama_rms_norm(rsqrt: Node) -> Match | Reject:
    """x * rsqrt(mean(x^2, -1, keepdim=True) + eps) * weight, with or without the fp32 upcast of x
    and the cast back before the weight (HF's LlamaRMSNorm, Mistral, Qwen, Gemma's without +1)."""
    add = arg(rsqrt, "input")
    if canon(add) == "mean":
        if canon(arg(add, "input")) == "add":
            return Reject("eps (or another term) is added inside the mean, not after it")
        return Reject("rsqrt of the mean square with no eps added")
    if canon(add) != "add" or arg(add, "alpha") != 1:
        return Reject(f"rsqrt of {canon(add) or 'a non-sum'}, not of mean(x^2) + eps")
    mean = next((o for o in operands(add) if canon(o) == "mean"), None)
    if mean is None:
        return Reject("eps is added to something other than mean(x^2)")
    eps = the_other(add, mean)
    if not isinstance(eps, (float, int)) or isinstance(eps, bool):
        return Reject("eps is not a constant number")
    xs = _squared(arg(mean, "input"))
    if xs is None:
        inner = arg(mean, "input")
        if canon(inner) == "add":
            return Reject("eps (or another term) is added inside the mean, not after it")
        return Reject(f"mean of {canon(inner) or 'a tensor'}, not of x^2")
    sq = arg(mean, "input")
    xv = val(xs)
    if not isinstance(xv, torch.Tensor) or xv.dim() < 1:
        return Reject("the squared input is not a tensor")
    if not last_dim(arg(mean, "dim"), xv.dim()):
        return Reject(f"mean over dim {arg(mean, 'dim')}, not the last")
    if arg(mean, "keepdim") is not True or arg(mean, "dtype") is not None:
        return Reject("mean without keepdim=True (or with a dtype)")
    normalise = only_user(rsqrt)
    if canon(normalise) != "mul" or the_other(normalise, rsqrt) is not xs:
        return Reject("rsqrt(...) does not multiply the tensor whose square it measures")
    x_node, upcasts = _widening_source(xs)
    x = val(x_node)
    why = _plain_input("x", x)
    if why:
        return why
    covered = {rsqrt, add, mean, sq, normalise, *upcasts}
    node = normalise
    while (user := only_user(node)) is not None and cast_source(user) is node:
        covered.add(user)
        node = user
    scale = only_user(node)
    if canon(scale) != "mul":
        return Reject("the normalised x is not multiplied by a weight")
    weight_node = the_other(scale, node)
    weight, _ = _widening_source(weight_node)
    why = _hidden_vector("weight", weight, x.shape[-1])
    if why:
        return why
    covered.add(scale)
    out = scale
    while dtype(out) != x.dtype and (user := only_user(out)) is not None and cast_source(user) is out:
        covered.add(user)
        out = user
    if dtype(out) != x.dtype or val(out).shape != x.shape:
        return Reject(f"the result stays {dtype(out)}, not the input's {x.dtype} (kforge.rms_norm returns x's dtype)")
    note = "" if upcasts else f"computed in fp32 (the eager graph rounds each step to {x.dtype})"
    m = Match("rms_norm", (x_node, weight, float(eps)), (out,), frozenset(covered), rsqrt, note=note)
    return _with_residual_add(m, x_node, weight, float(eps))


def match_layer_norm(node: Node) -> Match | Reject:
    call = _norm_call(node, "layer_norm takes weight and bias")
    if isinstance(call, Reject):
        return call
    x_node, x, weight = call
    bias = arg(node, "bias")
    if bias is None:
        return Reject("no bias (bias=False): kforge.layer_norm takes weight and bias")
    why = _hidden_vector("bias", bias, x.shape[-1])
    if why:
        return why
    eps = arg(node, "eps")
    why = _constant_eps_same_dtype(node, eps, x)
    if why:
        return why
    return Match("layer_norm", (x_node, weight, bias, float(eps)), (node,), frozenset({node}), node)


def _rms_norm_example(x, weight, eps):
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def _llama_rms_norm_example(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _layer_norm_example(x, weight, bias, eps):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


PATTERNS = (
    Pattern("rms-norm", "rms_norm", "rms_norm", match_torch_rms_norm,
            "F.rms_norm / torch.nn.RMSNorm over the last dim with a weight; with a residual add before it, "
            "fused_add_rms_norm", also=("fused_add_rms_norm",), example=_rms_norm_example),
    Pattern("llama-rms-norm", "rms_norm", "rsqrt", match_llama_rms_norm,
            "x * rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight, with or without the fp32 upcast; "
            "with a residual add before it, fused_add_rms_norm", also=("fused_add_rms_norm",),
            example=_llama_rms_norm_example),
    Pattern("layer-norm", "layer_norm", "layer_norm", match_layer_norm,
            "F.layer_norm / torch.nn.LayerNorm over the last dim with weight and bias", example=_layer_norm_example),
)
