"""kforge.evaluate.timing on a CPU: labels, ordering, interleaving, checks of timed calls (replay
fails), input-set rotation, and CUDA timers that refuse clearly without CUDA."""
from __future__ import annotations

import pytest
import torch

from kforge.evaluate import timing
from kforge.evaluate.timing import TimedCall, Timing, TimingError


def _spin(n: int):
    def fn(x):
        total = 0
        for i in range(n):
            total += i
        return total
    return fn


def test_time_cpu_labels_cpu_wall_and_orders_by_real_cost():
    """Ten times the Python work measures several times slower, interleaved in one run."""
    timings = timing.time_cpu({"light": _spin(2_000), "heavy": _spin(20_000)}, (torch.zeros(1),), samples=7)
    light, heavy = timings["light"], timings["heavy"]
    for t in (light, heavy):
        assert t.kind == "cpu_wall" and not t.is_gpu
        assert t.reps == t.samples == 7
        assert 0 < t.p20_us <= t.p50_us <= t.p80_us
        assert t.host_us == t.p50_us and t.wall_us is None
    assert heavy.p50_us > 3 * light.p50_us
    ratios = timing.speedups(timings, "heavy")
    assert ratios["heavy"] == 1.0 and ratios["light"] == pytest.approx(heavy.p50_us / light.p50_us)


def test_time_together_on_cpu_is_time_cpu():
    timings = timing.time_together({"a": _spin(100), "b": _spin(100)}, (torch.zeros(1),))
    assert set(timings) == {"a", "b"} and all(t.kind == "cpu_wall" for t in timings.values())


def _make_args(i: int) -> tuple:
    return (torch.randn(8, 16, generator=torch.Generator().manual_seed(1000 + i)),)


def _check_softmax(calls: list[TimedCall]) -> None:
    for call in calls:
        want = torch.softmax(call.args[0], dim=-1)
        if not torch.allclose(call.out, want):
            raise AssertionError(f"{call.name}: timed output does not match its inputs")


def test_checks_see_timed_outputs_on_never_seen_inputs():
    seen: list[TimedCall] = []

    def check(calls):
        seen.extend(calls)
        _check_softmax(calls)

    honest = lambda x: torch.softmax(x, dim=-1)  # noqa: E731
    timing.time_cpu({"vendor": honest, "candidate": honest}, _make_args, samples=6, check=check, check_calls=2)
    first = _make_args(0)[0]
    # Each picked call got a fresh set, not the one timed everywhere else; the last call of every
    # batch (6 per function) is checked on whatever its batch saw.
    assert len(seen) == 2 * 2 + 2 * 6
    assert len({c.args[0].sum().item() for c in seen if not torch.equal(c.args[0], first)}) >= 4
    assert sorted(c.name for c in seen).count("candidate") == 8


def test_timed_calls_of_a_stored_kernel_must_return_exact_tensors():
    from kforge.evaluate.worker_tasks import TimedOutputMismatch, _exact_tensors

    class Lazy(torch.Tensor):
        pass

    assert _exact_tensors("softmax", lambda x: x.softmax(-1))(torch.ones(2)).sum() == 1
    with pytest.raises(TimedOutputMismatch, match="returned a Lazy, not exactly a torch.Tensor"):
        _exact_tensors("softmax", lambda x: x.softmax(-1).as_subclass(Lazy))(torch.ones(2))


def test_garbage_after_many_calls_is_caught_by_the_last_call_of_a_batch():
    """Right for its first calls, then wrong (the issue's kernel turned after 3000); the picked
    calls may all come early, the last call of the last batch cannot."""
    calls = [0]

    def tires(x):
        calls[0] += 1
        y = torch.softmax(x, dim=-1)
        return y if calls[0] <= 4 else y * 0

    with pytest.raises(AssertionError, match="candidate: timed output does not match"):
        timing.time_cpu({"candidate": tires}, _make_args, samples=6, check=_check_softmax, check_calls=1)


def test_a_replayed_result_fails_the_check():
    """Caches its result by the input's data_ptr: right on the first call, stale once the timer
    overwrites the inputs in place before a checked call."""
    cache = {}

    def replays(x):
        if x.data_ptr() not in cache:
            cache[x.data_ptr()] = torch.softmax(x, dim=-1)
        return cache[x.data_ptr()]

    with pytest.raises(AssertionError, match="candidate: timed output does not match"):
        timing.time_together({"candidate": replays}, _make_args, check=_check_softmax)


def test_input_sets_rotate_and_need_make_args():
    ptrs = set()

    def records(x):
        ptrs.add(x.data_ptr())

    timing.time_cpu({"f": records}, _make_args, sets=3, samples=6)
    assert len(ptrs) == 3
    with pytest.raises(ValueError, match="make_args"):
        timing.time_cpu({"f": records}, (torch.zeros(2),), sets=2)


def test_host_cost_is_the_per_call_cost():
    assert timing.host_cost(_spin(10), (torch.zeros(1),), calls=20) > 0
    slow = timing.host_cost(lambda x: torch.zeros(1).add_(x).sum(), (torch.ones(1),), calls=20)
    assert slow > 0


def test_timing_validates_kind_and_order():
    with pytest.raises(ValueError, match="timing kind"):
        Timing(1, 2, 3, host_us=1, kind="gpu", reps=3)
    with pytest.raises(ValueError, match="p20 <= p50 <= p80"):
        Timing(3, 2, 1, host_us=1, kind="cpu_wall", reps=3)
    assert Timing(1, 2, 3, host_us=1, kind="cuda_graph", reps=3).to_json()["kind"] == "cuda_graph"


def test_escaped_stream_flags_wall_time_the_events_missed():
    honest = Timing(90, 100, 110, host_us=8, kind="cuda_events", reps=50, wall_us=95)
    hidden = Timing(4, 5, 6, host_us=8, kind="cuda_events", reps=50, wall_us=1000)  # side-stream kernel
    host_bound = Timing(2, 3, 4, host_us=40, kind="cuda_events", reps=50, wall_us=45)
    assert [timing.escaped_stream(t) for t in (honest, hidden, host_bound)] == [False, True, False]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on machines without CUDA")
@pytest.mark.parametrize("call", [
    lambda: timing.time_cuda(lambda x: x, (torch.zeros(2),)),
    lambda: timing.time_cuda_graph(lambda x: x, _make_args),
])
def test_cuda_timers_refuse_clearly_without_cuda(call):
    with pytest.raises(TimingError, match="needs CUDA.*time_cpu"):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_timers_order_work_and_label_kinds():  # pragma: no cover - runs on the GPU machines
    def make(i):
        return (torch.randn(1 << 22, device="cuda", generator=None),)

    small = lambda x: x[: 1 << 12] * 2  # noqa: E731
    big = lambda x: x * 2  # noqa: E731
    ts = timing.time_together({"small": small, "big": big}, make)
    assert ts["big"].kind == "cuda_events" and ts["big"].p50_us > ts["small"].p50_us
    assert not timing.escaped_stream(ts["big"])
    g = timing.time_cuda_graph(small, make)
    assert g.kind == "cuda_graph" and 0 < g.p50_us < ts["small"].p50_us + 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_every_timed_cuda_call_is_compared_bitwise():
    """Right for its first 600 calls (warm-up and host-cost loops included), then wrong: every
    timed call is compared on the device with an untimed call on the same inputs."""
    calls = [0]

    def tires(x):
        calls[0] += 1
        y = torch.softmax(x, dim=-1)
        return y if calls[0] <= 600 else y * 0

    def make_args(i):
        return (_make_args(i)[0].cuda(),)

    timing.time_together({"candidate": lambda x: torch.softmax(x, dim=-1)}, make_args, exact=("candidate",), reps=50)
    # With a baseline whose picked calls refresh the shared input sets (and a check, so picks
    # happen), an honest candidate still passes: its expected bits follow every refresh.
    seen = []
    timing.time_together({"candidate": lambda x: torch.softmax(x, dim=-1), "vendor": lambda x: torch.softmax(x, -1)},
                         make_args, exact=("candidate",), reps=400, check=seen.extend, check_calls=20)
    assert sum(c.name == "candidate" for c in seen) > 20
    for c in seen:
        torch.testing.assert_close(c.out, torch.softmax(c.args[0], dim=-1), rtol=0, atol=0)
    with pytest.raises(timing.OutputChanged, match="candidate: .* timed calls returned other bits"):
        timing.time_together({"candidate": tires}, make_args, exact=("candidate",), reps=1000)


def test_a_host_loop_blocked_by_a_full_launch_queue_is_retried_with_fewer_calls():
    from kforge.evaluate.timing.clock import next_attempt

    # rotary_embedding's vendor on the H200: 270 us a call issued freely, 23 ms a call in a loop of
    # 100 behind the sleep (the queue of ~1000 launches filled with its 17 a call): fewer calls,
    # and a sleep sized for them, not the blocked loop.
    calls, pad = next_attempt(100, 55_000.0, 23_000.0, 270.0)
    assert calls == 25 and pad == 2 * 270.0 * 25 + 1000.0
    assert next_attempt(25, pad, 23_000.0, 270.0)[0] == 6
    assert next_attempt(6, pad, 23_000.0, 270.0)[0] == 5  # never below five calls
    assert next_attempt(5, 1000.0, 23_000.0, 270.0) == (5, 4000.0)  # then only the sleep grows
    # A host merely slower than the sleep (not blocked): the same calls behind a longer sleep.
    assert next_attempt(100, 3000.0, 300.0, 270.0) == (100, 12000.0)
