"""F.cross_entropy over (N, C) logits with class-index targets, reduced as 'none', 'sum' or 'mean'."""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.fx import Graph, Node

from kforge.compile.graph import arg, val
from kforge.compile.patterns.base import Match, Pattern, Reject
from kforge.specs.cross_entropy import DTYPES, accumulate_dtype

REDUCTIONS = ("none", "sum", "mean")


def _reduced(reduction: str, compute: torch.dtype, result: torch.dtype) -> Callable[..., tuple[Node, ...]]:
    """Emission of the per-row loss followed by F.cross_entropy's reduction: 'sum' adds the rows,
    'mean' divides that by the number of targets that are not ignore_index (NaN when all are, as
    eager gives), both accumulated in `compute` and rounded once to `result`."""

    def emit(graph: Graph, args: tuple[Any, ...], call) -> tuple[Node, ...]:
        (loss,) = call(*args)  # (N,)
        total = graph.call_method("sum", (loss,), {"dtype": compute})
        if reduction == "mean":
            _, target, ignore_index = args
            kept = graph.call_method("sum", (graph.call_function(torch.ne, (target, ignore_index)),))
            total = graph.call_function(torch.div, (total, kept))
        if result != compute:
            total = graph.call_method("to", (total, result))
        return (total,)

    return emit


def match_cross_entropy(node: Node) -> Match | Reject:
    x_node, target = arg(node, "input"), arg(node, "target")
    x, t = val(x_node), val(target)
    if not isinstance(x, torch.Tensor) or x.dtype not in DTYPES:
        return Reject(f"the logits are {getattr(x, 'dtype', type(x).__name__)}, not one of kforge's float dtypes")
    if x.dim() != 2:
        return Reject(f"{x.dim()}-D logits: F.cross_entropy's classes are dim 1"
                      + (" of (N, C, ...)" if x.dim() > 2 else " only for (N, C); this is unbatched")
                      + ", kforge.cross_entropy takes (N, C) with classes last")
    if not isinstance(t, torch.Tensor):
        return Reject("the target is not a tensor")
    if t.dtype.is_floating_point:
        return Reject("the target holds class probabilities (floating point), not class indices")
    if t.dtype != torch.int64 or tuple(t.shape) != tuple(x.shape[:1]):
        return Reject(f"the target is {t.dtype} {tuple(t.shape)}, not int64 ({x.shape[0]},)")
    if arg(node, "weight") is not None:
        return Reject("class weights (weight=...): kforge.cross_entropy weighs every class alike")
    smoothing = arg(node, "label_smoothing")
    if smoothing != 0.0 or isinstance(smoothing, bool):
        return Reject(f"label_smoothing={smoothing}: kforge.cross_entropy has none")
    if arg(node, "size_average") is not None or arg(node, "reduce") is not None:
        return Reject("the deprecated size_average/reduce arguments are set")
    ignore_index = arg(node, "ignore_index")
    if type(ignore_index) is not int:
        what = "computed in the graph" if isinstance(ignore_index, Node) else type(ignore_index).__name__
        return Reject(f"ignore_index is {what}, not a constant int")
    reduction = arg(node, "reduction")
    if reduction not in REDUCTIONS:
        return Reject(f"reduction={reduction!r}, not one of {REDUCTIONS}")
    args = (x_node, target, ignore_index)
    if reduction == "none":
        return Match("cross_entropy", args, (node,), frozenset({node}), node)
    # Eager rounds each row's log-probability to x's dtype and adds the rows at fp32 or wider: so do these.
    return Match("cross_entropy", args, (node,), frozenset({node}), node,
                 emit=_reduced(reduction, accumulate_dtype(x.dtype), x.dtype))


def _cross_entropy_example(x, target, ignore_index):
    # F.cross_entropy's classes are dim 1: rows of any rank go through (N, C), as a model's loss does.
    loss = F.cross_entropy(x.reshape(-1, x.shape[-1]), target.reshape(-1), ignore_index=ignore_index, reduction="none")
    return loss.reshape(target.shape)


PATTERNS = (
    Pattern("cross-entropy", "cross_entropy", "cross_entropy", match_cross_entropy,
            "F.cross_entropy / nn.CrossEntropyLoss over (N, C) logits and int64 class indices, no class "
            "weights or label smoothing, reduction 'none', 'sum' or 'mean' (over the targets not ignored)",
            example=_cross_entropy_example),
)
