"""CUDA device time: one event pair per call ("cuda_events", with the bitwise check of exact
functions), or graph replays of many captured calls ("cuda_graph")."""
from __future__ import annotations

import random
from typing import Any

import torch

from kforge.evaluate.timing.clock import event_time_us, host_cost, l2_flush_buffer, sleep_cycles, synced_wall_us
from kforge.evaluate.timing.inputs import InputSets, checked_picks, clone, quantiles, rotated, run_check
from kforge.evaluate.timing.result import OutputChanged, TimedCall, Timing, TimingError

CUDA_WARMUP = 10
CUDA_TARGET_S = 0.1  # device time spent timing one function
CUDA_REPS = (20, 1000)
PAD_MARGIN_US = 20.0  # GPU sleep queued before a timed call beyond twice its host time
# Under this, an event pair around one call mostly measures the launch: on an H100, x * 2 over
# 4096 floats took 4.6 us by events and 1.06 us per call by graph replays (2026-11-22).
GRAPH_BELOW_US = 10.0
GRAPH_TARGET_US = 1000.0  # device time of one graph replay
GRAPH_CALLS = (10, 1000)  # calls captured in one graph
GRAPH_REPLAYS = (10, 200)


def flat_bits(out: Any) -> torch.Tensor:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return torch.cat([o.detach().contiguous().view(-1).view(torch.uint8) for o in outs])


def time_events(fns, inputs: InputSets, *, warmup, reps, flush_l2, check, check_calls,
                 exact: tuple[str, ...] = ()) -> dict[str, Timing]:
    device = inputs.device
    first = inputs[0]
    expected: dict[str, dict[int, torch.Tensor]] = {name: {} for name in exact if name in fns}
    kept: list[TimedCall] = []
    for name in expected:  # the untimed output of each set, checked like a timed one
        for slot, args in enumerate(inputs.sets):
            out = fns[name](*args)
            expected[name][slot] = flat_bits(out).clone()
            kept.append(TimedCall(name, clone(args), clone(out)))
    changed = {name: torch.zeros((), dtype=torch.int64, device=device) for name in expected}
    for fn in fns.values():
        for _ in range(max(warmup, 1)):
            fn(*first)
    torch.cuda.synchronize()
    host = {name: host_cost(fn, first) for name, fn in fns.items()}
    pads = {name: sleep_cycles(device, 2 * host[name] + PAD_MARGIN_US) for name in fns}
    estimate = {name: event_time_us(fn, first, pads[name]) for name, fn in fns.items()}
    if reps is None:
        reps = int(CUDA_TARGET_S * 1e6 * len(fns) / sum(estimate.values()))
        reps = min(max(reps, CUDA_REPS[0]), CUDA_REPS[1])
    flush = l2_flush_buffer(device) if flush_l2 else None
    picks = checked_picks(fns, reps, check_calls) if check is not None else set()
    events = {name: [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                     for _ in range(reps)] for name in fns}
    for r in range(reps):
        for name, fn in rotated(fns, r):
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
                        expected[other][slot] = flat_bits(out).clone()
                        kept.append(TimedCall(other, seen, clone(out)))
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
                    expected[name][slot] = flat_bits(out).clone()
                else:
                    changed[name] += (flat_bits(out) != expected[name][slot]).any()
            if seen is not None:
                kept.append(TimedCall(name, seen, clone(out)))
            elif check is not None and r == reps - 1:  # the last call, after all the others
                kept.append(TimedCall(name, clone(args), clone(out)))
            del out
    torch.cuda.synchronize()
    run_check(check, kept)
    for name, count in changed.items():
        if int(count):
            raise OutputChanged(f"{name}: {int(count)} of {reps} timed calls returned other bits than an untimed "
                                "call on the same inputs (a result that changes with the call count)")
    result = {}
    for name, fn in fns.items():
        times = [s.elapsed_time(e) * 1e3 for s, e in events[name]]
        p20, p50, p80 = quantiles(times)
        wall = synced_wall_us(fn, first, max(p50, host[name]))
        result[name] = Timing(p20, p50, p80, host_us=host[name], kind="cuda_events", reps=reps, wall_us=wall)
    return result


def time_graphs(fns, inputs: InputSets, *, warmup, replays, calls, flush_l2, check, check_calls) -> dict[str, Timing]:
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
            estimate = event_time_us(fn, first, sleep_cycles(device, 2 * host[name] + PAD_MARGIN_US))
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
        pads[name] = sleep_cycles(device, 2 * host_cost(graph.replay, (), calls=10, device=device) + PAD_MARGIN_US)
        per_replay[name] = event_time_us(graph.replay, (), pads[name], calls=3)
    if replays is None:
        replays = int(CUDA_TARGET_S * 1e6 * len(fns) / sum(per_replay.values()))
        replays = min(max(replays, GRAPH_REPLAYS[0]), GRAPH_REPLAYS[1])
    flush = l2_flush_buffer(device) if flush_l2 else None
    checked_replay = {name: random.randrange(replays) for name in fns} if check is not None else {}
    events = {name: [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                     for _ in range(replays)] for name in fns}
    kept: list[TimedCall] = []
    for r in range(replays):
        for name, graph in rotated(graphs, r):
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
                kept.append(TimedCall(name, seen[i % len(inputs.sets)], clone(out)))
    torch.cuda.synchronize()
    run_check(check, kept)
    result = {}
    for name in fns:
        times = [s.elapsed_time(e) * 1e3 / counts[name] for s, e in events[name]]
        p20, p50, p80 = quantiles(times)
        result[name] = Timing(p20, p50, p80, host_us=host[name], kind="cuda_graph", reps=replays)
    del graphs, kept_outs
    return result
