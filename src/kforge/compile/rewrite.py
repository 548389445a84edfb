"""Rewriting one Dynamo graph: every pattern's matches become calls of kforge ops.

For each pattern (in `PATTERNS` order) and each node of its anchor kind: match, check that the
pattern's intermediates are used nowhere else, plan the route (`compile.routing`), emit the op's
call, point the replaced nodes' users at its outputs, and let dead-code elimination drop the
eager nodes. Every candidate ends up in the `Report`: rewritten (and how it is routed), left
alone (and why), so `kforge.explain` can show near misses as well as hits.
"""
from __future__ import annotations

import dataclasses
import operator
from typing import Any

import torch
from torch.fx import GraphModule, Node

from kforge.compile.graph import canon, val, where
from kforge.compile.patterns import PATTERNS, Match, Pattern, Reject
from kforge.compile.routing import Plan, Route, plan


@dataclasses.dataclass(frozen=True)
class Entry:
    pattern: str
    op: str
    where: str
    rewritten: bool
    route: str  # "baked" / "runtime" / "leave"; "" when the pattern did not match
    impl: str
    reason: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Report:
    """What the backend did to one graph."""

    graph: int  # the graph's number in this compilation (a graph break starts a new one)
    entries: list[Entry] = dataclasses.field(default_factory=list)

    @property
    def rewritten(self) -> list[Entry]:
        return [e for e in self.entries if e.rewritten]

    def to_dict(self) -> dict[str, Any]:
        return {"graph": self.graph, "entries": [e.to_dict() for e in self.entries]}


def _escapes(m: Match) -> str | None:
    """Why the match cannot replace its nodes: an intermediate is also used outside the pattern."""
    for node in m.nodes:
        if node in m.replaces:
            continue
        outside = [u for u in node.users if u not in m.nodes]
        if outside:
            return (f"its intermediate {node.name} is also used by {outside[0].name}: rewriting would "
                    "compute the pattern twice")
    return None


_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ipow,
                      operator.ifloordiv, operator.imod, operator.iand, operator.ior, operator.ixor,
                      operator.ilshift, operator.irshift, operator.imatmul, operator.setitem}


def mutates(node: Node) -> bool:
    """Whether `node` may write a tensor (in place) or other state: `x.add_()`, `x += y`,
    `x[i] = y`, a mutable op overload. Dynamo's graph is not functional yet."""
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("__")
    if node.op != "call_function":
        return False
    target = node.target
    if target in _INPLACE_FUNCTIONS:
        return True
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.is_mutable
    name = getattr(target, "__name__", "")
    return name.endswith("_") and not name.startswith("__")


def _unsafe_mutation(m: Match) -> str | None:
    """Why rewriting `m` could change what a mutation does: an in-place op in the pattern writes a
    tensor the pattern does not own (its other readers would see the old value), or a mutation
    lies between the pattern's first and last node (the rewrite moves computation across it)."""
    for node in m.nodes:
        if mutates(node):
            written = node.args[0] if node.args else None
            if written not in m.nodes:
                return (f"{node.name} writes {getattr(written, 'name', written)} in place, which the pattern "
                        "does not own")
    position = _position(m.anchor.graph)
    span = [position(n) for n in m.nodes | {r for r in m.replaces if r is not None}]
    first, last = min(span), max(span)
    for node in m.anchor.graph.nodes:
        if first < position(node) < last and node not in m.nodes and mutates(node):
            return f"{node.name} mutates state between the pattern's first and last node"
    return None


def _fake(a: Any) -> Any:
    return val(a) if isinstance(a, Node) else a


def _emit(gm: GraphModule, m: Match, p: Plan) -> None:
    graph = gm.graph
    op = getattr(torch.ops.kforge, m.op)
    root = max(m.nodes, key=_position(graph))

    def call(*args: Any) -> tuple[Node, ...]:
        if p.route is Route.BAKED:
            node = graph.call_function(op.compiled, (*args, p.impl))
        else:
            node = graph.call_function(op.default, tuple(args))
        node.meta["stack_trace"] = m.anchor.meta.get("stack_trace")
        if len(m.replaces) == 1:
            return (node,)
        return tuple(graph.call_function(operator.getitem, (node, i)) for i in range(len(m.replaces)))

    with graph.inserting_before(root):
        outputs = m.emit(graph, m.args, call) if m.emit is not None else call(*m.args)
        for i, (old, new) in enumerate(zip(m.replaces, outputs)):
            if old is None:
                continue
            cast = m.casts[i] if i < len(m.casts) else None
            if cast is not None:
                new = graph.call_method("to", (new, cast))
            new.meta.update({k: v for k, v in old.meta.items() if k in _KEPT_META})
            old.replace_all_uses_with(new)
    # Erased now: later patterns must not see the claimed nodes (the MoE router's softmax would
    # otherwise be rewritten again by the plain softmax pattern). Then what fed only them (the
    # chunk before a SwiGLU, a weight's upcast), never a node that mutates: no global dead-code
    # pass on a graph that is not functional yet (it would drop a KV-cache copy_).
    inputs = {i for n in m.nodes for i in n.all_input_nodes} - set(m.nodes)
    for node in sorted(m.nodes, key=_position(graph), reverse=True):
        if not node.users:
            graph.erase_node(node)
    _erase_dead(graph, inputs)


def _erase_dead(graph, candidates: set) -> None:
    while candidates:
        node = candidates.pop()
        if node.users or node.op not in ("call_function", "call_method") or mutates(node):
            continue
        candidates.update(node.all_input_nodes)
        graph.erase_node(node)


_KEPT_META = ("example_value", "stack_trace", "nn_module_stack", "source_fn_stack")


def _position(graph) -> Any:
    order = {n: i for i, n in enumerate(graph.nodes)}
    return lambda n: order[n]


def _toposort(graph) -> None:
    """Stable topological order: a replaced node's users may precede the pattern's last node."""
    placed: set[Node] = set()
    order: list[Node] = []
    visiting: set[Node] = set()

    def place(n: Node) -> None:
        if n in placed:
            return
        visiting.add(n)
        for d in n.all_input_nodes:
            if d not in placed:
                place(d)
        visiting.discard(n)
        placed.add(n)
        order.append(n)

    for n in list(graph.nodes):
        place(n)
    prev = None
    for n in order:
        if prev is not None and prev.next is not n:
            prev.append(n)
        prev = n


def rewrite(gm: GraphModule, options, graph_index: int = 0, cudagraphs: bool = False) -> Report:
    """Rewrite `gm` in place under `options` (a `compile.backend.Options`); returns the report.
    `cudagraphs`: the compiled graph will be replayed as a CUDA graph (ranks by device time)."""
    report = Report(graph_index)
    changed = False
    for pattern in PATTERNS:
        for node in [n for n in gm.graph.nodes if _anchored(n, pattern)]:
            if getattr(node, "_erased", False) or node.graph is not gm.graph:
                continue
            entry = _one(gm, pattern, node, options, cudagraphs)
            if entry is not None:
                report.entries.append(entry)
                changed = changed or entry.rewritten
    if changed:
        _toposort(gm.graph)
        gm.graph.lint()
        gm.recompile()
    return report


def _anchored(node: Node, pattern: Pattern) -> bool:
    return canon(node) == pattern.anchor


def _one(gm: GraphModule, pattern: Pattern, node: Node, options, cudagraphs: bool) -> Entry | None:
    if not node.users:
        return None  # dead code: Inductor drops it anyway
    m = pattern.match(node)
    if m is None:
        return None  # no candidate at all (an "add" anchor sees every add): nothing to report
    place = where(node)
    if isinstance(m, Reject):
        return Entry(pattern.name, pattern.op, place, False, "", "", m.reason)
    if options.ops is not None and m.op not in options.ops:
        return Entry(pattern.name, m.op, place, False, "", "", f"kforge.{m.op} is not in options['ops']")
    why = _escapes(m) or _unsafe_mutation(m)
    if why:
        return Entry(pattern.name, m.op, place, False, "", "", why)
    from kforge import ops

    p = plan(ops.SPECS[m.op], tuple(_fake(a) for a in m.args), compiler=options.compiler, on_miss=options.on_miss,
             route=options.route, log_misses=options.log_misses, cudagraphs=cudagraphs)
    if p.route is Route.LEAVE:
        return Entry(pattern.name, m.op, place, False, p.route.value, p.impl, p.reason, m.note)
    _emit(gm, m, p)
    return Entry(pattern.name, m.op, place, True, p.route.value, p.impl, p.reason, m.note)
