"""The natural PyTorch spellings of kforge's ops, as matchers over a Dynamo FX graph.

A `Pattern` is anchored on one canonical operation (`kforge.compile.graph.canon`): for every node
of that kind its `match` returns a `Match` (what the kforge op's arguments are and which graph
nodes its outputs stand for) or a `Reject` with the reason the code there is not exactly the op
(`kforge.explain` shows both). Patterns run in the order of `PATTERNS`: larger ones first, so the
MoE router's softmax is claimed by topk_softmax before the plain softmax pattern sees it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch.fx import Node


@dataclasses.dataclass(frozen=True)
class Reject:
    reason: str


@dataclasses.dataclass(frozen=True)
class Match:
    op: str  # the kforge op
    args: tuple[Any, ...]  # its positional arguments: graph nodes or constants, in schema order
    replaces: tuple[Node | None, ...]  # per output of the op, the graph node it stands for (None: unused)
    nodes: frozenset[Node]  # every node the pattern covers; only `replaces` may have users outside it
    anchor: Node
    casts: tuple[torch.dtype | None, ...] = ()  # per output: a dtype to convert it to (topk's int64 indices)
    note: str = ""  # what differs from the eager graph within the op's error budget
    # Custom emission for patterns whose arguments need reshaping (rotary): given the graph (with the
    # insertion point set), the argument nodes and a function that emits the op's call and returns
    # its output nodes, returns the nodes standing for `replaces`.
    emit: Callable[..., tuple[Node, ...]] | None = None


@dataclasses.dataclass(frozen=True)
class Pattern:
    name: str  # "llama-rms-norm", shown by kforge.explain
    op: str  # the kforge op it rewrites to
    anchor: str  # the canonical operation it starts from
    match: Callable[[Node], Match | Reject | None]  # None: not a candidate at all (nothing to report)
    description: str


def _all() -> tuple[Pattern, ...]:
    from kforge.compile.patterns import activations, loss, moe, norms, rotary

    ordered: list[Pattern] = []
    for module in (moe, norms, loss, activations, rotary):
        ordered.extend(module.PATTERNS)
    return tuple(ordered)


PATTERNS: tuple[Pattern, ...] = _all()
