"""One timer for everything kforge measures: candidates, baselines, calibration, device ceilings.

    from kforge.evaluate import timing
    t = timing.time_cuda(fn, args)                # device events, L2 flushed, p20/p50/p80 over reps
    t = timing.time_cuda_graph(fn, make_args)     # microsecond kernels: N calls in a graph, replayed
    ts = timing.time_together({"vendor": vendor, "candidate": fn}, make_args, check=check)
    timing.speedups(ts, "vendor")                 # {"vendor": 1.0, "candidate": 1.7}: ratios
    ts = timing.time_cpu({"a": a, "b": b}, args)  # CPU wall time, labelled "cpu_wall"

Inputs (`args` of every timer): a tuple of arguments, used for every call; or `make_args(i) ->
tuple` building input set i (same shapes, dtypes and non-tensor arguments for every i). Given
`make_args`, the timer builds `sets` input sets and rotates through them call by call; by default
one set, except where no L2 flush separates calls (graph replays, `flush_l2=False`): there on
CUDA enough sets to exceed `ROTATE_L2` times the L2 together (at most `MAX_SETS`), so that inputs
which fit in the cache are not timed hot.

Checks of timed calls (anti-replay): `check(calls)` receives `TimedCall(name, args, out)` for
`check_calls` timed calls of each function, picked at random, plus the last call of each CPU batch
and the last timed call on CUDA events (a result that goes wrong after many calls); given
`make_args`, the inputs of each picked call are overwritten in place just before it with a
never-seen set (`make_args(sets + k)`), and `args` is that set. A function that replays a result
(keyed by data_ptr, call count, input content sampled at its first call, ...) returns a stale answer
there. Outputs are cloned after the
call, outside the timed region. `check` raises to reject; the exception leaves the timer.

Kinds (`records.TIMING_KINDS`): "cuda_events", "cuda_graph", and "cpu_wall", which is never a GPU
timing. CUDA timers raise `TimingError` on a machine without CUDA; importing this module never
touches CUDA.

How a CUDA call is timed ("cuda_events"): the L2 flushed (a buffer twice its size zeroed), a GPU
sleep queued that outlasts the host's cost of the call, then start event, the call, end event.
The start event fires only once the call is already queued, so the events see device time, not
Python and launch overhead; that is `host_us`, measured by `host_cost`. `wall_us` is the time per
call of a loop ended by one device-wide synchronize: events on the current stream miss work a
function hides on another stream, the synchronize does not (`escaped_stream`).

This module holds the entry points; the pieces: `result` (Timing, TimedCall, errors), `inputs` (input
sets, picks of checked calls), `clock` (host cost, event times, L2 flush, sleep rate), `cpu` and
`cuda` (the timers).
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from kforge.evaluate.timing.clock import host_cost, require_cuda
from kforge.evaluate.timing.cpu import CPU_SAMPLES, SAMPLE_S, time_sets
from kforge.evaluate.timing.cuda import CUDA_WARMUP, time_events, time_graphs
from kforge.evaluate.timing.inputs import CHECK_CALLS, InputSets
from kforge.evaluate.timing.result import (Check, Inputs, OutputChanged, TimedCall, Timing, TimingError,
                                           escaped_stream, speedups)

__all__ = ["measure", "time_cuda", "time_cuda_graph", "time_together", "time_cpu", "host_cost", "speedups",
           "escaped_stream", "Timing", "TimedCall", "TimingError", "OutputChanged"]


def measure(fns: Mapping[str, Callable], args: Inputs) -> dict[str, Timing]:
    """Every function timed in one run on `args`' device: `time_together` (events) on CUDA,
    `time_cpu` on a CPU."""
    return time_together(fns, args)


def time_cuda(fn: Callable, args: Inputs, *, warmup: int = CUDA_WARMUP, reps: int | None = None,
              flush_l2: bool = True, sets: int | None = None, check: Check | None = None,
              check_calls: int = CHECK_CALLS) -> Timing:
    """Device time per call of `fn` by CUDA events, one pair per call (kind "cuda_events").

    warmup: untimed calls first; reps: timed calls (None: enough for ~`CUDA_TARGET_S` of device
    time, within `CUDA_REPS`); flush_l2: zero a buffer twice the L2 before each call. See the
    module docstring for `args`, `sets` and `check`. Raises `TimingError` without CUDA."""
    require_cuda("time_cuda")
    return time_together({"fn": fn}, args, warmup=warmup, reps=reps, flush_l2=flush_l2, sets=sets,
                         check=check, check_calls=check_calls, _need_cuda="time_cuda")["fn"]


def time_cuda_graph(fn: Callable, args: Inputs, *, calls: int | None = None, replays: int | None = None,
                    warmup: int = 3, flush_l2: bool = True, sets: int | None = None, check: Check | None = None,
                    check_calls: int = CHECK_CALLS) -> Timing:
    """Device time per call of `fn` for kernels of a few microseconds (kind "cuda_graph").

    `calls` calls (None: enough for ~`GRAPH_TARGET_US` per replay, within `GRAPH_CALLS`) are
    captured in one CUDA graph, rotating through the input sets; each replay is timed by events
    (L2 flushed before it) and divided by `calls`. The launch gaps between eager calls vanish,
    as inside a captured model. host_us is the eager `host_cost`. Raises `TimingError` without
    CUDA, or when `fn` cannot be captured (host syncs, host reads of device data)."""
    require_cuda("time_cuda_graph")
    return time_together({"fn": fn}, args, graph=True, calls=calls, reps=replays, warmup=warmup, flush_l2=flush_l2,
                         sets=sets, check=check, check_calls=check_calls, _need_cuda="time_cuda_graph")["fn"]


def time_together(fns: Mapping[str, Callable], args: Inputs, *, graph: bool = False, warmup: int = CUDA_WARMUP,
                  reps: int | None = None, calls: int | None = None, flush_l2: bool = True, sets: int | None = None,
                  check: Check | None = None, check_calls: int = CHECK_CALLS, _need_cuda: str | None = None,
                  exact: tuple[str, ...] = ()) -> dict[str, Timing]:
    """Candidates and baselines timed interleaved in one run on the same inputs, so their ratios
    (`speedups`) hold whatever the machine's state: rep r times every function, in an order
    rotated by r. On CUDA by events, or by graph replays with `graph=True` (then `reps` counts
    replays and `calls` the calls per graph); on a CPU by `time_cpu` (kind "cpu_wall").
    exact: names of functions (deterministic: verified so) whose every timed call by CUDA events
    must return, bit for bit, what an untimed call on the same input set returned (that call's
    output goes to `check` too); compared on the device after each call, outside the events, so a
    result that goes wrong after many calls raises `OutputChanged`."""
    if not fns:
        raise ValueError("time_together needs at least one function")
    inputs = InputSets(args, sets, rotate=graph or not flush_l2)
    if inputs.device.type != "cuda":
        if _need_cuda:
            raise TimingError(f"{_need_cuda} needs CUDA tensors among the arguments, got device {inputs.device}")
        return time_sets(fns, inputs, samples=CPU_SAMPLES, sample_s=SAMPLE_S, check=check, check_calls=check_calls)
    require_cuda("time_together")
    with torch.cuda.device(inputs.device):
        if graph:
            return time_graphs(fns, inputs, warmup=warmup, replays=reps, calls=calls, flush_l2=flush_l2,
                                check=check, check_calls=check_calls)
        return time_events(fns, inputs, warmup=warmup, reps=reps, flush_l2=flush_l2, check=check,
                            check_calls=check_calls, exact=exact)


def time_cpu(fns: Mapping[str, Callable], args: Inputs, *, samples: int = CPU_SAMPLES, sample_s: float = SAMPLE_S,
             sets: int | None = None, check: Check | None = None, check_calls: int = CHECK_CALLS) -> dict[str, Timing]:
    """Wall time per call of each function (kind "cpu_wall": never a GPU timing).

    Each sample is a batch of back-to-back calls ~`sample_s` long; batches are interleaved across
    functions (order rotated per sample) so drift in the machine's load hits all alike; p20/p50/p80
    over `samples` batches; host_us = p50. A checked call is the first call of its batch."""
    if not fns:
        raise ValueError("time_cpu needs at least one function")
    return time_sets(fns, InputSets(args, sets, rotate=False), samples=samples, sample_s=sample_s,
                     check=check, check_calls=check_calls)
