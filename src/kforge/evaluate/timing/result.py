"""What a timer returns and raises: `Timing` per function, `TimedCall` for checks of timed calls,
the errors, and the two readings of timings (`speedups`, `escaped_stream`)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Union

from kforge.records import TIMING_KINDS

MakeArgs = Callable[[int], tuple]
Inputs = Union[tuple, MakeArgs]
Check = Callable[[list["TimedCall"]], Any]

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


class OutputChanged(AssertionError):
    """A timed call's output differs bitwise from what the same inputs gave on an untimed call."""
