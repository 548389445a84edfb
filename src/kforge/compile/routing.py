"""Routing at compile time: for a matched op with static shapes, the score table's choice is made
once and baked into the graph (`kforge::<op>.compiled(..., impl)`); with symbolic shapes the op is
routed per call (`kforge::<op>`), as eager calls are.

Inductor is one of the table's implementations, so a pattern whose best record is Inductor (or,
by default, one the table has nothing for) is left in the graph for Inductor to compile and fuse
with its neighbours: the backend is then never slower than Inductor where kforge knows nothing
better. Misses are queued for the miss log, so `kforge generate --from-misses` sees them.
"""
from __future__ import annotations

import dataclasses
import enum

import torch

from kforge.backends import BackendName
from kforge.compile.graph import is_static
from kforge.device import fingerprint
from kforge.errors import KforgeInputError
from kforge.router.dispatch import ROUTER
from kforge.router.key import alignment, call_info
from kforge.router.policy import rank
from kforge.specs import OpSpec


class Route(str, enum.Enum):
    BAKED = "baked"  # the table's choice, fixed in the graph
    RUNTIME = "runtime"  # kforge::<op>, routed per call
    LEAVE = "leave"  # not rewritten: Inductor (or the chosen compiler) gets the original code


@dataclasses.dataclass(frozen=True)
class Plan:
    route: Route
    impl: str  # baked: the implementation id; runtime: "per call"; leave: who serves it
    reason: str


def _aligned(tensors) -> int:
    """Fake tensors have no address; Inductor's buffers and graph inputs start 16-byte aligned
    (the caching allocator's blocks are 512-byte aligned), so only storage offsets can misalign."""
    return min(alignment((t.storage_offset() * t.element_size()) & 15) for t in tensors)


def compile_cost(record, cudagraphs: bool) -> float:
    """A record's cost per call inside a compiled graph. Under CUDA graphs the host does nothing
    per call: device time alone. Otherwise a kforge op still pays its host cost per call (the
    dispatcher and the launch, measured with the record), but Inductor's code is launched by the
    graph's own wrapper: its record's host cost (a standalone compiled function, 50-150 us on an
    H200) is not what the graph pays, so Inductor is ranked by device time."""
    if cudagraphs or record.backend == BackendName.INDUCTOR.value:
        return record.p50_us
    return record.score_us


def plan(spec: OpSpec, fake_args: tuple, *, compiler: str, on_miss: str, route: str, log_misses: bool = True,
         cudagraphs: bool = False) -> Plan:
    """How the backend serves one matched call of `spec` whose arguments are `fake_args`."""
    tensors = [fake_args[i] for i in spec.tensor_args]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        if compiler == "inductor":
            return Plan(Route.LEAVE, "inductor", "inputs require grad: Inductor derives the backward")
        return Plan(Route.RUNTIME, "per call", "inputs require grad: routed per call, vendor serves autograd")
    try:
        spec.check(fake_args)
    except KforgeInputError as exc:
        return Plan(Route.LEAVE, compiler, f"not a valid call of kforge.{spec.name}: {exc}")
    if route == "runtime" or not all(is_static(t) for t in tensors):
        why = "routing per call (options route='runtime')" if route == "runtime" else "dynamic shapes: routed per call"
        return Plan(Route.RUNTIME, "per call", why)
    device = str(fingerprint(tensors[0].device))
    call = call_info(spec, fake_args, device, aligned=_aligned(tensors))
    ranking = rank(spec, ROUTER.table.records(device, spec.name), call, ROUTER.disabled)
    if ranking.eligible:
        ranked = sorted(ranking.eligible, key=lambda r: (compile_cost(r, cudagraphs), r.impl))
        best = ranked[0]
        unit = "us device" if cudagraphs else "us"
        others = ", ".join(f"{r.impl} {compile_cost(r, cudagraphs):.1f}" for r in ranked[1:3])
        why = f"table: {best.impl} {compile_cost(best, cudagraphs):.1f} {unit}" + (f" (next: {others})" if others else "")
        if ranking.shape != call.key.shape:
            why += f", measured at the nearest shape {ranking.shape}"
        if best.backend == BackendName.INDUCTOR.value and compiler == "inductor":
            return Plan(Route.LEAVE, "inductor", why)
        return Plan(Route.BAKED, best.impl, why)
    rejected = "; ".join(f"{r.impl}: {why}" for r, why in ranking.rejected)
    why = f"no usable record for {call.key.dtypes} {call.key.shape}" + (f": {rejected}" if rejected else "")
    if on_miss == "inductor" and compiler == "inductor":
        if log_misses:  # no call will ever reach kforge to log it
            ROUTER.note_miss(call.key)
        return Plan(Route.LEAVE, "inductor", why + (" (miss logged)" if log_misses else ""))
    # Routed per call: vendor now, each call counted as a miss, and a kernel generated for the key
    # later serves the same compiled graph once the table has it.
    return Plan(Route.RUNTIME, "per call", why + "; routed per call (vendor until the table has a record)")
