"""CPU wall time (kind "cpu_wall"): interleaved batches of back-to-back calls."""
from __future__ import annotations

import time

from kforge.evaluate.timing.inputs import InputSets, checked_picks, clone, quantiles, rotated, run_check
from kforge.evaluate.timing.result import TimedCall, Timing

SAMPLE_S = 2e-3  # one CPU timing batch; long enough that perf_counter's ~100 ns jitter is noise
CPU_SAMPLES = 25


def time_sets(fns, inputs: InputSets, *, samples: int, sample_s: float, check, check_calls) -> dict[str, Timing]:
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
    picks = checked_picks(fns, samples, check_calls) if check is not None else set()
    times: dict[str, list[float]] = {name: [] for name in fns}
    kept: list[TimedCall] = []
    for s in range(samples):
        for name, fn in rotated(fns, s):
            args = inputs[s]
            seen = inputs.refresh(s) if (name, s) in picks else None
            n = inner[name]
            start = clock()
            out = last = fn(*args)
            for _ in range(n - 1):
                last = fn(*args)
            times[name].append((clock() - start) / n * 1e6)
            if seen is not None:  # the batch's calls all saw `seen`: its first output is theirs
                kept.append(TimedCall(name, seen, clone(out)))
            if check is not None:  # and its last, after every call before it (garbage after N calls)
                kept.append(TimedCall(name, clone(args), clone(last)))
    run_check(check, kept)
    out = {}
    for name, ts in times.items():
        p20, p50, p80 = quantiles(ts)
        out[name] = Timing(p20, p50, p80, host_us=p50, kind="cpu_wall", reps=len(ts))
    return out
