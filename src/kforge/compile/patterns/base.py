"""The types every compile pattern shares: a `Pattern` (a matcher anchored on one canonical
operation), the `Match` it returns where the code is exactly a kforge op, and the `Reject` (with
the reason) where it is not. The pattern modules import these from here, and `patterns/__init__.py`
imports the pattern modules, so no module imports the package that imports it.
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
    also: tuple[str, ...] = ()  # other ops its matches may rewrite to (rms-norm: fused_add_rms_norm)
    # The natural spelling it rewrites, as an eager function of the op's arguments (`make_inputs`'s
    # call, scalars included): tests/test_compile_patterns.py compiles it at the op's smoke shapes and
    # checks that it is rewritten to `op` and still matches the op's reference. None: the pattern's
    # tests are its own (the MoE router's and rotary's spellings take other arguments than the op).
    example: Callable[..., Any] | None = None

    @property
    def ops(self) -> tuple[str, ...]:
        """Every kforge op a match of this pattern may be."""
        return (self.op, *self.also)
