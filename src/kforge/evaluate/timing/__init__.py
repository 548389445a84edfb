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
`check_calls` timed calls of each function, picked at random, plus the last call of each CPU batch and the last timed call on CUDA events
(a result that goes wrong after many calls); given `make_args`, the inputs of each
picked call are overwritten in place just before it with a never-seen set (`make_args(sets + k)`),
and `args` is that set. A function that replays a result (keyed by data_ptr, call count, input
content sampled at its first call, ...) returns a stale answer there. Outputs are cloned after the
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
"""
from __future__ import annotations

import dataclasses
import math
import random
import statistics
import time
from typing import Any, Callable, Mapping, Union

import torch

from kforge.records import TIMING_KINDS

MakeArgs = Callable[[int], tuple]
Inputs = Union[tuple, MakeArgs]
Check = Callable[[list["TimedCall"]], Any]

SAMPLE_S = 2e-3  # one CPU timing batch; long enough that perf_counter's ~100 ns jitter is noise
CPU_SAMPLES = 25
CUDA_WARMUP = 10
CUDA_TARGET_S = 0.1  # device time spent timing one function
CUDA_REPS = (20, 1000)
HOST_CALLS = 100  # well under the CUDA launch queue's depth (~1000), so launches never block
PAD_MARGIN_US = 20.0  # GPU sleep queued before a timed call beyond twice its host time
# Under this, an event pair around one call mostly measures the launch: on an H100, x * 2 over
# 4096 floats took 4.6 us by events and 1.06 us per call by graph replays (2026-11-22).
GRAPH_BELOW_US = 10.0
GRAPH_TARGET_US = 1000.0  # device time of one graph replay
GRAPH_CALLS = (10, 1000)  # calls captured in one graph
GRAPH_REPLAYS = (10, 200)
ROTATE_L2 = 2  # rotated input sets together exceed this many L2s
MAX_SETS = 64
CHECK_CALLS = 3  # timed calls of each function whose outputs `check` sees
WALL_TARGET_US = 2000.0  # length of the synchronized loop behind wall_us
ESCAPE_FACTOR, ESCAPE_SLACK_US = 2.0, 50.0  # see `escaped_stream`


class TimingError(RuntimeError):
    """A timer cannot run here (no CUDA) or on this function (not capturable in a CUDA graph)."""


@dataclasses.dataclass(frozen=True)
class Timing:
    """Microseconds per call of one function on one problem.

    p20/p50/p80: quantiles over `reps` samples (calls, graph replays divided by the calls they
    hold, or CPU batches). host_us: host time per call, what a caller such as the router pays
    (on a CPU the host is the device: host_us = p50). kind: a `records.TIMING_KINDS` value.
    wall_us: per call, loop ended by a device-wide synchronize ("cuda_events" only)."""

    p20_us: float
    p50_us: float
    p80_us: float
    host_us: float
    kind: str
    reps: int
    wall_us: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in TIMING_KINDS:
            raise ValueError(f"timing kind {self.kind!r} not one of {TIMING_KINDS}")
        if not 0 <= self.p20_us <= self.p50_us <= self.p80_us:
            raise ValueError(f"timing needs 0 <= p20 <= p50 <= p80, got {self.p20_us}, {self.p50_us}, {self.p80_us}")

    @property
    def samples(self) -> int:
        """`reps`, under the name calibrate's callers use."""
        return self.reps

    @property
    def is_gpu(self) -> bool:
        return self.kind != "cpu_wall"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TimedCall:
    """One timed call handed to `check`: the function's name, the inputs the call saw (a copy no
    function has touched) and what it returned (cloned right after the call)."""

    name: str
    args: tuple
    out: Any


def speedups(timings: Mapping[str, Timing], baseline: str) -> dict[str, float]:
    """baseline p50 / p50 of each function: >1 means faster than the baseline."""
    base = timings[baseline].p50_us
    return {name: base / t.p50_us if t.p50_us > 0 else math.inf for name, t in timings.items()}


def escaped_stream(t: Timing) -> bool:
    """True when a CUDA function's synchronized wall time per call is far beyond both its event
    time and its host cost: device work the events did not see (a kernel on a side stream; with
    `do_bench` alone such a kernel once looked 1800x faster). Only work of more than
    ~`ESCAPE_SLACK_US` per call is caught; the static checks forbid creating streams at all."""
    return t.wall_us is not None and t.wall_us > ESCAPE_FACTOR * max(t.p50_us, t.host_us) + ESCAPE_SLACK_US


# -- entry points ---------------------------------------------------------------------------------
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
    _require_cuda("time_cuda")
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
    _require_cuda("time_cuda_graph")
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
    inputs = _InputSets(args, sets, rotate=graph or not flush_l2)
    if inputs.device.type != "cuda":
        if _need_cuda:
            raise TimingError(f"{_need_cuda} needs CUDA tensors among the arguments, got device {inputs.device}")
        return _time_cpu(fns, inputs, samples=CPU_SAMPLES, sample_s=SAMPLE_S, check=check, check_calls=check_calls)
    _require_cuda("time_together")
    with torch.cuda.device(inputs.device):
        if graph:
            return _time_graphs(fns, inputs, warmup=warmup, replays=reps, calls=calls, flush_l2=flush_l2,
                                check=check, check_calls=check_calls)
        return _time_events(fns, inputs, warmup=warmup, reps=reps, flush_l2=flush_l2, check=check,
                            check_calls=check_calls, exact=exact)


def time_cpu(fns: Mapping[str, Callable], args: Inputs, *, samples: int = CPU_SAMPLES, sample_s: float = SAMPLE_S,
             sets: int | None = None, check: Check | None = None, check_calls: int = CHECK_CALLS) -> dict[str, Timing]:
    """Wall time per call of each function (kind "cpu_wall": never a GPU timing).

    Each sample is a batch of back-to-back calls ~`sample_s` long; batches are interleaved across
    functions (order rotated per sample) so drift in the machine's load hits all alike; p20/p50/p80
    over `samples` batches; host_us = p50. A checked call is the first call of its batch."""
    if not fns:
        raise ValueError("time_cpu needs at least one function")
    return _time_cpu(fns, _InputSets(args, sets, rotate=False), samples=samples, sample_s=sample_s,
                     check=check, check_calls=check_calls)


def host_cost(fn: Callable, args: tuple, *, calls: int = HOST_CALLS, device: torch.device | str | None = None) -> float:
    """Host microseconds per call of `fn(*args)`: what a caller (the router) pays per call.

    A loop of `calls` calls timed on the host clock. On CUDA the loop is queued behind a GPU
    sleep that outlasts it (checked: an event after the sleep must still be pending when the
    loop ends, else the loop is retried behind a longer sleep), so the device never runs the
    calls while the host issues them and can never throttle it; one synchronize after the loop.
    device: where `fn` runs, when `args` holds no tensor (a graph's replay)."""
    args = tuple(args)
    device = torch.device(device) if device is not None else _device_of(args)
    clock = time.perf_counter
    fn(*args)  # first-call work (lazy init, compilation) is not the per-call cost
    if device.type != "cuda":
        start = clock()
        for _ in range(calls):
            fn(*args)
        return (clock() - start) / calls * 1e6
    _require_cuda("host_cost")
    with torch.cuda.device(device):
        torch.cuda.synchronize()
        start = clock()
        for _ in range(10):
            fn(*args)
        per_call_us = (clock() - start) / 10 * 1e6
        torch.cuda.synchronize()
        pad_us = 2 * per_call_us * calls + 1000.0
        for _ in range(4):
            torch.cuda._sleep(_cycles(device, pad_us))
            slept = torch.cuda.Event()
            slept.record()
            start = clock()
            for _ in range(calls):
                fn(*args)
            elapsed = clock() - start
            covered = not slept.query()
            torch.cuda.synchronize()
            if covered:
                break
            pad_us *= 4
        return elapsed / calls * 1e6


# -- input sets -----------------------------------------------------------------------------------
class _InputSets:
    """The input sets a timer rotates through (`sets[i % n]` for call i), and fresh ones."""

    def __init__(self, inputs: Inputs, sets: int | None, *, rotate: bool):
        if callable(inputs):
            self.make: MakeArgs | None = inputs
            first = tuple(inputs(0))
            self.device = _device_of(first)
            n = sets if sets is not None else (self._auto_sets(first) if rotate else 1)
            if n < 1:
                raise ValueError(f"sets must be >= 1, got {n}")
            self.sets = [first] + [tuple(inputs(i)) for i in range(1, n)]
        else:
            if not isinstance(inputs, (tuple, list)):
                raise TypeError(f"timer inputs must be an argument tuple or make_args(i), got {type(inputs).__name__}")
            if sets not in (None, 1):
                raise ValueError("rotating among several input sets needs make_args(i), not one argument tuple")
            self.make = None
            self.sets = [tuple(inputs)]
            self.device = _device_of(self.sets[0])
        self._next_fresh = len(self.sets)

    def _auto_sets(self, first: tuple) -> int:
        if self.device.type != "cuda":
            return 1
        nbytes = sum(a.numel() * a.element_size() for a in first if isinstance(a, torch.Tensor))
        l2 = _l2_bytes(self.device)
        return max(1, min(MAX_SETS, math.ceil(ROTATE_L2 * l2 / max(nbytes, 1))))

    def __getitem__(self, i: int) -> tuple:
        return self.sets[i % len(self.sets)]

    def refresh(self, i: int) -> tuple:
        """Overwrite, in place, the tensors of the set call `i` uses with a never-seen set and
        return that set (an untouched copy of what call `i` will see). Without make_args: the
        set itself."""
        if self.make is None:
            return self[i]
        fresh = tuple(self.make(self._next_fresh))
        self._next_fresh += 1
        with torch.no_grad():
            for dst, src in zip(self[i], fresh):
                if isinstance(dst, torch.Tensor):
                    dst.copy_(src)
        return fresh


def _device_of(args: tuple) -> torch.device:
    return next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))


def _picks(names, reps: int, per_fn: int) -> set[tuple[str, int]]:
    """(name, rep) of the timed calls whose outputs are checked: random, so unpredictable."""
    rng = random.SystemRandom()
    return {(name, rep) for name in names for rep in rng.sample(range(reps), min(per_fn, reps))}


def _rotated(fns: Mapping[str, Callable], r: int) -> list[tuple[str, Callable]]:
    items = list(fns.items())
    k = r % len(items)
    return items[k:] + items[:k]


def _clone(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.detach().clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_clone(o) for o in out)
    if isinstance(out, dict):
        return {k: _clone(v) for k, v in out.items()}
    return out


def _quantiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        values = list(values) * 2
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    return deciles[1], deciles[4], deciles[7]


def _run_check(check: Check | None, kept: list[TimedCall]) -> None:
    if check is not None:
        check(kept)


# -- CPU ------------------------------------------------------------------------------------------
def _time_cpu(fns, inputs: _InputSets, *, samples: int, sample_s: float, check, check_calls) -> dict[str, Timing]:
    clock = time.perf_counter
    samples = max(samples, 2)
    inner = {}
    for name, fn in fns.items():
        args = inputs[0]
        fn(*args)  # first-call work (lazy init, compilation) is not timed
        calls, start = 0, clock()
        while True:
            fn(*args)
            calls += 1
            elapsed = clock() - start
            if elapsed >= sample_s / 4:
                break
        inner[name] = max(1, round(sample_s * calls / elapsed))
    picks = _picks(fns, samples, check_calls) if check is not None else set()
    times: dict[str, list[float]] = {name: [] for name in fns}
    kept: list[TimedCall] = []
    for s in range(samples):
        for name, fn in _rotated(fns, s):
            args = inputs[s]
            seen = inputs.refresh(s) if (name, s) in picks else None
            n = inner[name]
            start = clock()
            out = last = fn(*args)
            for _ in range(n - 1):
                last = fn(*args)
            times[name].append((clock() - start) / n * 1e6)
            if seen is not None:  # the batch's calls all saw `seen`: its first output is theirs
                kept.append(TimedCall(name, seen, _clone(out)))
            if check is not None:  # and its last, after every call before it (garbage after N calls)
                kept.append(TimedCall(name, _clone(args), _clone(last)))
    _run_check(check, kept)
    out = {}
    for name, ts in times.items():
        p20, p50, p80 = _quantiles(ts)
        out[name] = Timing(p20, p50, p80, host_us=p50, kind="cpu_wall", reps=len(ts))
    return out


# -- CUDA -----------------------------------------------------------------------------------------
def _require_cuda(what: str) -> None:
    if not torch.cuda.is_available():
        raise TimingError(f"{what} needs CUDA, and torch {torch.__version__} sees no CUDA device here; "
                          "on a CPU use time_cpu (its timings are kind 'cpu_wall', never GPU timings)")


class OutputChanged(AssertionError):
    """A timed call's output differs bitwise from what the same inputs gave on an untimed call."""


def _flat_bits(out: Any) -> torch.Tensor:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return torch.cat([o.detach().contiguous().view(-1).view(torch.uint8) for o in outs])


def _time_events(fns, inputs: _InputSets, *, warmup, reps, flush_l2, check, check_calls,
                 exact: tuple[str, ...] = ()) -> dict[str, Timing]:
    device = inputs.device
    first = inputs[0]
    expected: dict[str, dict[int, torch.Tensor]] = {name: {} for name in exact if name in fns}
    kept: list[TimedCall] = []
    for name in expected:  # the untimed output of each set, checked like a timed one
        for slot, args in enumerate(inputs.sets):
            out = fns[name](*args)
            expected[name][slot] = _flat_bits(out).clone()
            kept.append(TimedCall(name, _clone(args), _clone(out)))
    changed = {name: torch.zeros((), dtype=torch.int64, device=device) for name in expected}
    for fn in fns.values():
        for _ in range(max(warmup, 1)):
            fn(*first)
    torch.cuda.synchronize()
    host = {name: host_cost(fn, first) for name, fn in fns.items()}
    pads = {name: _cycles(device, 2 * host[name] + PAD_MARGIN_US) for name in fns}
    estimate = {name: _event_time_us(fn, first, pads[name]) for name, fn in fns.items()}
    if reps is None:
        reps = int(CUDA_TARGET_S * 1e6 * len(fns) / sum(estimate.values()))
        reps = min(max(reps, CUDA_REPS[0]), CUDA_REPS[1])
    flush = _l2_flush_buffer(device) if flush_l2 else None
    picks = _picks(fns, reps, check_calls) if check is not None else set()
    events = {name: [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                     for _ in range(reps)] for name in fns}
    for r in range(reps):
        for name, fn in _rotated(fns, r):
            args = inputs[r]
            seen = inputs.refresh(r) if (name, r) in picks else None
            if seen is not None:
                # The set is shared: every function's expected bits for it are stale now. Each
                # exact function gets its new expectation from an untimed call on the new set,
                # checked against the reference with the others.
                slot = r % len(inputs.sets)
                for other in expected:
                    if other != name:
                        out = fns[other](*args)
                        expected[other][slot] = _flat_bits(out).clone()
                        kept.append(TimedCall(other, seen, _clone(out)))
                        del out
            if flush is not None:
                flush.zero_()
            torch.cuda._sleep(pads[name])
            start, end = events[name][r]
            start.record()
            out = fn(*args)
            end.record()
            if name in expected:
                slot = r % len(inputs.sets)
                if seen is not None:  # a new set: this output (checked below) is what it must give
                    expected[name][slot] = _flat_bits(out).clone()
                else:
                    changed[name] += (_flat_bits(out) != expected[name][slot]).any()
            if seen is not None:
                kept.append(TimedCall(name, seen, _clone(out)))
            elif check is not None and r == reps - 1:  # the last call, after all the others
                kept.append(TimedCall(name, _clone(args), _clone(out)))
            del out
    torch.cuda.synchronize()
    _run_check(check, kept)
    for name, count in changed.items():
        if int(count):
            raise OutputChanged(f"{name}: {int(count)} of {reps} timed calls returned other bits than an untimed "
                                "call on the same inputs (a result that changes with the call count)")
    result = {}
    for name, fn in fns.items():
        times = [s.elapsed_time(e) * 1e3 for s, e in events[name]]
        p20, p50, p80 = _quantiles(times)
        wall = _synced_wall_us(fn, first, max(p50, host[name]))
        result[name] = Timing(p20, p50, p80, host_us=host[name], kind="cuda_events", reps=reps, wall_us=wall)
    return result


def _time_graphs(fns, inputs: _InputSets, *, warmup, replays, calls, flush_l2, check, check_calls) -> dict[str, Timing]:
    device = inputs.device
    first = inputs[0]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as graph capture requires
        for fn in fns.values():
            for i in range(max(warmup, 1)):
                fn(*inputs[i])
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    host = {name: host_cost(fn, first) for name, fn in fns.items()}
    graphs, counts, kept_outs, pads, per_replay = {}, {}, {}, {}, {}
    for name, fn in fns.items():
        n = calls
        if n is None:
            estimate = _event_time_us(fn, first, _cycles(device, 2 * host[name] + PAD_MARGIN_US))
            n = min(max(round(GRAPH_TARGET_US / estimate), GRAPH_CALLS[0]), GRAPH_CALLS[1])
        picked = set(random.SystemRandom().sample(range(n), min(check_calls, n))) if check is not None else set()
        graph, outs = torch.cuda.CUDAGraph(), {}
        try:
            with torch.cuda.graph(graph):
                for i in range(n):
                    out = fn(*inputs[i])
                    if i in picked:  # other outputs are dropped, so their memory is reused in the graph
                        outs[i] = out
                    del out
        except Exception as exc:
            raise TimingError(f"{name}: {n} calls could not be captured in a CUDA graph "
                              f"({type(exc).__name__}: {exc})") from exc
        graph.replay()
        torch.cuda.synchronize()
        graphs[name], counts[name], kept_outs[name] = graph, n, outs
        pads[name] = _cycles(device, 2 * host_cost(graph.replay, (), calls=10, device=device) + PAD_MARGIN_US)
        per_replay[name] = _event_time_us(graph.replay, (), pads[name], calls=3)
    if replays is None:
        replays = int(CUDA_TARGET_S * 1e6 * len(fns) / sum(per_replay.values()))
        replays = min(max(replays, GRAPH_REPLAYS[0]), GRAPH_REPLAYS[1])
    flush = _l2_flush_buffer(device) if flush_l2 else None
    checked_replay = {name: random.randrange(replays) for name in fns} if check is not None else {}
    events = {name: [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                     for _ in range(replays)] for name in fns}
    kept: list[TimedCall] = []
    for r in range(replays):
        for name, graph in _rotated(graphs, r):
            seen = {}
            if checked_replay.get(name) == r:
                for i in sorted(kept_outs[name]):
                    slot = i % len(inputs.sets)
                    if slot not in seen:
                        seen[slot] = inputs.refresh(i)
            if flush is not None:
                flush.zero_()
            torch.cuda._sleep(pads[name])
            start, end = events[name][r]
            start.record()
            graph.replay()
            end.record()
            for i, out in sorted(kept_outs[name].items()) if seen else ():
                kept.append(TimedCall(name, seen[i % len(inputs.sets)], _clone(out)))
    torch.cuda.synchronize()
    _run_check(check, kept)
    result = {}
    for name in fns:
        times = [s.elapsed_time(e) * 1e3 / counts[name] for s, e in events[name]]
        p20, p50, p80 = _quantiles(times)
        result[name] = Timing(p20, p50, p80, host_us=host[name], kind="cuda_graph", reps=replays)
    del graphs, kept_outs
    return result


def _event_time_us(fn: Callable, args: tuple, pad_cycles: int, calls: int = 5) -> float:
    """Rough device time per call (at least 1 us): events around `calls` back-to-back calls."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(pad_cycles * calls)
    start.record()
    for _ in range(calls):
        fn(*args)
    end.record()
    torch.cuda.synchronize()
    return max(start.elapsed_time(end) * 1e3 / calls, 1.0)


def _synced_wall_us(fn: Callable, args: tuple, per_call_us: float) -> float:
    calls = min(max(round(WALL_TARGET_US / max(per_call_us, 1.0)), 5), 100)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    torch.cuda.synchronize()  # device-wide: waits for every stream
    return (time.perf_counter() - start) / calls * 1e6


_flush_buffers: dict[int, torch.Tensor] = {}
_sleep_rates: dict[int, float] = {}


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _l2_bytes(device: torch.device) -> int:
    return getattr(torch.cuda.get_device_properties(_index(device)), "L2_cache_size", 0) or 64 << 20


def _l2_flush_buffer(device: torch.device) -> torch.Tensor:
    index = _index(device)
    buf = _flush_buffers.get(index)
    if buf is None:
        buf = torch.empty(2 * _l2_bytes(device) // 4, dtype=torch.int32, device=torch.device("cuda", index))
        _flush_buffers[index] = buf
    return buf


def _cycles(device: torch.device, us: float) -> int:
    """`torch.cuda._sleep` cycles lasting at least `us` microseconds."""
    return int(_sleep_cycles_per_us(device) * us) + 1


def _sleep_cycles_per_us(device: torch.device) -> float:
    """GPU clock cycles per microsecond as `torch.cuda._sleep` counts them, measured once per
    device. The fastest of three readings: an idle GPU clocks down (345 MHz idle against 1980 MHz
    busy, seen on an H200), and a rate read slow would make every pad too short."""
    index = _index(device)
    rate = _sleep_rates.get(index)
    if rate is None:
        cycles = 2_000_000
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(cycles)  # the first call may pay for loading the kernel
        rates = []
        for _ in range(3):
            start.record()
            torch.cuda._sleep(cycles)
            end.record()
            torch.cuda.synchronize()
            rates.append(cycles / max(start.elapsed_time(end) * 1e3, 1.0))
        rate = max(rates)
        _sleep_rates[index] = rate
    return rate
