"""The device clock: host cost per call, rough event times, synchronized wall time, the L2 flush
buffer and `torch.cuda._sleep`'s rate (measured once per device)."""
from __future__ import annotations

import time
from typing import Callable

import torch

from kforge.evaluate.timing.result import TimingError

HOST_CALLS = 100  # under the CUDA launch queue's depth (~1000) for calls of up to ~10 kernels; fewer when it fills
WALL_TARGET_US = 2000.0  # length of the synchronized loop behind wall_us


def require_cuda(what: str) -> None:
    if not torch.cuda.is_available():
        raise TimingError(f"{what} needs CUDA, and torch {torch.__version__} sees no CUDA device here; "
                          "on a CPU use time_cpu (its timings are kind 'cpu_wall', never GPU timings)")


def device_of(args: tuple) -> torch.device:
    return next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))


def host_cost(fn: Callable, args: tuple, *, calls: int = HOST_CALLS, device: torch.device | str | None = None) -> float:
    """Host microseconds per call of `fn(*args)`: what a caller (the router) pays per call.

    A loop of `calls` calls timed on the host clock. On CUDA the loop is queued behind a GPU
    sleep that outlasts it (checked: an event after the sleep must still be pending when the
    loop ends, else the loop is retried behind a longer sleep), so the device never runs the
    calls while the host issues them and can never throttle it; one synchronize after the loop.
    device: where `fn` runs, when `args` holds no tensor (a graph's replay)."""
    args = tuple(args)
    device = torch.device(device) if device is not None else device_of(args)
    clock = time.perf_counter
    fn(*args)  # first-call work (lazy init, compilation) is not the per-call cost
    if device.type != "cuda":
        start = clock()
        for _ in range(calls):
            fn(*args)
        return (clock() - start) / calls * 1e6
    require_cuda("host_cost")
    with torch.cuda.device(device):
        torch.cuda.synchronize()
        start = clock()
        for _ in range(10):
            fn(*args)
        per_call_us = (clock() - start) / 10 * 1e6
        torch.cuda.synchronize()
        pad_us = 2 * per_call_us * calls + 1000.0
        for _ in range(6):
            torch.cuda._sleep(sleep_cycles(device, pad_us))
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
            calls, pad_us = next_attempt(calls, pad_us, elapsed / calls * 1e6, per_call_us)
        return elapsed / calls * 1e6


def next_attempt(calls: int, pad_us: float, loop_per_call_us: float, free_per_call_us: float) -> tuple[int, float]:
    """(calls, sleep us) for the next try of a loop the sleep did not cover. A loop slower per call
    than the same calls issued freely (`free_per_call_us`, no sleep ahead) was blocked: the launch
    queue filled behind the sleep (a call of many kernels: 100 calls of rotary_embedding's vendor,
    17 launches each, measured 23 ms a call where it costs 0.27 ms), so fewer calls; otherwise the
    host was just slower than the sleep: a longer sleep."""
    if loop_per_call_us > 2 * free_per_call_us and calls > 5:
        calls = max(calls // 4, 5)
        return calls, 2 * free_per_call_us * calls + 1000.0
    return calls, pad_us * 4


def event_time_us(fn: Callable, args: tuple, pad_cycles: int, calls: int = 5) -> float:
    """Rough device time per call (at least 1 us): events around `calls` back-to-back calls."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(pad_cycles * calls)
    start.record()
    for _ in range(calls):
        fn(*args)
    end.record()
    torch.cuda.synchronize()
    return max(start.elapsed_time(end) * 1e3 / calls, 1.0)


def synced_wall_us(fn: Callable, args: tuple, per_call_us: float) -> float:
    calls = min(max(round(WALL_TARGET_US / max(per_call_us, 1.0)), 5), 100)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    torch.cuda.synchronize()  # device-wide: waits for every stream
    return (time.perf_counter() - start) / calls * 1e6


_flush_buffers: dict[int, torch.Tensor] = {}
_sleep_rates: dict[int, float] = {}


def device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def l2_bytes(device: torch.device) -> int:
    return getattr(torch.cuda.get_device_properties(device_index(device)), "L2_cache_size", 0) or 64 << 20


def l2_flush_buffer(device: torch.device) -> torch.Tensor:
    index = device_index(device)
    buf = _flush_buffers.get(index)
    if buf is None:
        buf = torch.empty(2 * l2_bytes(device) // 4, dtype=torch.int32, device=torch.device("cuda", index))
        _flush_buffers[index] = buf
    return buf


def sleep_cycles(device: torch.device, us: float) -> int:
    """`torch.cuda._sleep` cycles lasting at least `us` microseconds."""
    return int(sleep_cycles_per_us(device) * us) + 1


def sleep_cycles_per_us(device: torch.device) -> float:
    """GPU clock cycles per microsecond as `torch.cuda._sleep` counts them, measured once per
    device. The fastest of three readings: an idle GPU clocks down (345 MHz idle against 1980 MHz
    busy, seen on an H200), and a rate read slow would make every pad too short."""
    index = device_index(device)
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
