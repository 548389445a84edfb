"""Implausible timings: a measurement that shows a stall is re-timed once, then refused; it never
reaches the score table.

Measured case (H200, issue 16): a vendor softmax recorded at 5390 us at a key where it takes 5 us,
and torch.compile at 6535 us at another: 1000x and more, from a stall during the timing run (another
process on the GPU, a first-call build inside the timed region), not from the kernels. Either
would have been served (or have lost) on the strength of a number nothing can reproduce. Rules,
each sized so that honest timings sit one to two orders of magnitude inside it:
  - SPREAD (every implementation): p80 > `SPREAD_LIMIT` x p20. The samples of one timing run
    disagree 20-fold: part of the run stalled. An honest run's p80/p20 is near 1 on CUDA events
    and graph replays. CPU batches drift with the machine's load: on a 2-core runner shared by
    the test workers and their sandboxes a tiny op's p80/p20 passed 20 (test_tune failed once
    under that load, alone it passes), so CPU wall timings get `SPREAD_LIMIT_CPU` (100x; the
    stalls this rule is for were 1000x and more).
  - PEERS (built-in implementations: vendor, inductor): p50 > `PEER_LIMIT` x the fastest other
    implementation's p50 at the same key in the same run. Vendor and Inductor compute the same op
    with mature code; 100x between them is a stall (5390 us against 5 us is 1078x). A candidate
    is never held to this: a correct but slow kernel (Triton's interpreter on a CPU is 100x to
    1000x slower than vendor) is slow, not implausible, and loses the ranking on its own.
  - FLOOR (built-ins, CUDA only): p50 > `FLOOR_LIMIT` x max(roofline floor, `LAUNCH_US`). Vendor
    kernels run within a few times of the roofline, or at the launch-bound few microseconds of a
    tiny problem. On a CPU the roofline is a poor guide (Python dispatch, slow-dtype paths), so
    CPU timings are judged by the first two rules.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

from kforge.evaluate.timing import Timing

SPREAD_LIMIT = 20.0
SPREAD_LIMIT_CPU = 100.0
PEER_LIMIT = 100.0
FLOOR_LIMIT = 100.0
LAUNCH_US = 5.0  # a launch-bound CUDA kernel's device time with the L2 flushed: a few microseconds
BUILTINS = ("vendor", "inductor")


@dataclasses.dataclass(frozen=True)
class Implausible:
    impl: str
    timing: Timing
    why: str  # a sentence with the numbers

    def __str__(self) -> str:
        t = self.timing
        return (f"{self.impl} p20/p50/p80 {t.p20_us:.2f}/{t.p50_us:.2f}/{t.p80_us:.2f} us ({t.kind}): {self.why}")


class ImplausibleTiming(RuntimeError):
    """A timing refused after one re-timing: it shows a stall, not the kernel. Names the op, key
    and numbers; nothing of that run is recorded."""

    def __init__(self, op: str, key, found: list[Implausible]):
        self.op, self.key, self.found = op, key, found
        super().__init__(f"kforge: implausible timing of {op} at {key}, refused after one re-timing: "
                         + "; ".join(str(f) for f in found))


def check(timings: Mapping[str, Timing], floor_us: float | None = None) -> list[Implausible]:
    """The implausible timings among `timings` ({impl: Timing}, measured at one key in one run);
    `floor_us`: the roofline floor at that key (CUDA), None when unknown. See the module docstring."""
    found = []
    for impl, t in timings.items():
        why = _why(impl, t, timings, floor_us)
        if why:
            found.append(Implausible(impl, t, why))
    return found


def _why(impl: str, t: Timing, timings: Mapping[str, Timing], floor_us: float | None) -> str:
    limit = SPREAD_LIMIT_CPU if t.kind == "cpu_wall" else SPREAD_LIMIT
    if t.p20_us > 0 and t.p80_us > limit * t.p20_us:
        return f"its samples spread {t.p80_us / t.p20_us:.0f}x (p80/p20 > {limit:g}): the run stalled"
    if not _builtin(impl):
        return ""
    peers = [(other, o.p50_us) for other, o in timings.items() if other != impl and o.p50_us > 0]
    if peers:
        other, fastest = min(peers, key=lambda p: p[1])
        if t.p50_us > PEER_LIMIT * fastest:
            return f"{t.p50_us / fastest:.0f}x the {other} timing of the same run ({fastest:.2f} us)"
    if floor_us is not None and t.kind != "cpu_wall":
        bound = max(floor_us, LAUNCH_US)
        if t.p50_us > FLOOR_LIMIT * bound:
            return (f"{t.p50_us / bound:.0f}x the larger of the roofline floor ({floor_us:.2f} us) and a "
                    f"launch ({LAUNCH_US:g} us)")
    return ""


def _builtin(impl: str) -> bool:
    return impl in BUILTINS or impl.split(":", 1)[0] in BUILTINS
