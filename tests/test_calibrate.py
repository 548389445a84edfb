"""kforge.evaluate.calibrate: correctness gate, timing, and records keyed as the router keys calls."""
from __future__ import annotations

import time

import pytest
import torch

import kforge
from kforge.backends import BackendName, Capabilities, Implementation
from kforge.device import fingerprint
from kforge.evaluate.calibrate import CalibrationRejected, calibrate, time_cpu
from kforge.ops import get_spec
from kforge.records import Domain
from kforge.router.key import call_info, exact_indices
from kforge.router.table import ScoreTable
from kforge.testing import assert_matches_reference


def _impl(impl_id: str, fn) -> Implementation:
    return Implementation(id=impl_id, backend=BackendName.TRITON, fn=fn, domain=Domain(), capabilities=Capabilities())


def _router_key(spec, shape, dtype):
    args = spec.make_inputs(shape, dtype, "cpu", 0)
    return call_info(spec, args, str(fingerprint("cpu"))).key


def test_records_cover_the_router_key_and_route_the_fastest():
    """vendor and inductor on a tiny bf16 rms_norm: records keyed exactly as the router keys the
    call, evidence covering it, positive ordered times, and the router then serves the fastest."""
    spec = get_spec("rms_norm")
    shape, dtype = (3, 2, 64), torch.bfloat16  # problem (6, 64)
    records = calibrate(spec, shape, dtype, "cpu")

    key = _router_key(spec, shape, dtype)
    assert key.shape == (6, 64) and key.dtypes == "bfloat16,bfloat16" and key.device.startswith("cpu|")
    assert sorted(r.impl for r in records) == ["inductor", "vendor"]
    assert [r.score_us for r in records] == sorted(r.score_us for r in records)
    for r in records:
        assert r.key == key
        assert r.backend == r.impl
        assert r.evidence.covers(key, exact_indices(spec))
        assert r.evidence.seeds == (0, 1, 2)
        assert 0 <= r.evidence.max_error_ratio <= 1
        assert 0 < r.p20_us <= r.p50_us <= r.p80_us
        assert r.timing == "cpu_wall" and r.host_us == r.p50_us
        assert r.gbps == pytest.approx(spec.bytes_moved((6, 64), dtype) / (r.p50_us * 1e-6) / 1e9)
        assert r.ceiling_fraction is None
        assert r.provider == "builtin"
        assert r.versions["torch"] == torch.__version__ and r.versions["kforge"] == kforge.__version__
        assert r.versions["device"] == fingerprint("cpu").name

    ScoreTable().write(records)
    kforge.reset()
    args = spec.make_inputs(shape, dtype, "cpu", 5)
    out = kforge.ops.rms_norm(*args)
    assert_matches_reference(spec, args, out)
    assert kforge.stats()["ops"]["rms_norm"]["by_impl"] == {records[0].impl: 1}
    assert kforge.stats()["ops"]["rms_norm"]["hit"] == 1


def test_wrong_implementation_gets_no_record():
    spec = get_spec("softmax")
    wrong = _impl("triton:plus-one", lambda x: spec.reference(x) + 1)
    with pytest.warns(CalibrationRejected) as caught:
        records = calibrate(spec, (4, 32), torch.float32, "cpu", backends=("vendor", wrong))
    assert [r.impl for r in records] == ["vendor"]
    rejection = next(w.message for w in caught if isinstance(w.message, CalibrationRejected))
    assert rejection.impl == "triton:plus-one"
    assert rejection.key == _router_key(spec, (4, 32), torch.float32)
    assert rejection.reason.startswith("seed 0:") and "over budget" in rejection.reason


def test_every_seed_is_checked():
    """Right on the first seed, wrong from the second: rejected, naming seed 1."""
    spec = get_spec("rms_norm")
    calls = []

    def right_once(x, weight, eps):
        calls.append(1)
        y = spec.reference(x, weight, eps)
        return y if len(calls) == 1 else y * 1.01

    with pytest.warns(CalibrationRejected, match="seed 1: "):
        records = calibrate(spec, (4, 64), torch.float32, "cpu", backends=(_impl("triton:drift", right_once),))
    assert records == []
    assert len(calls) == 2  # stopped at the first failing seed, never timed


def test_raising_writing_and_unknown_implementations_are_rejected():
    spec = get_spec("softmax")

    def raises(x):
        raise RuntimeError("out of resources")

    def writes_input(x):
        y = spec.reference(x)
        x.zero_()
        return y

    candidates = ("vendor", _impl("triton:raises", raises), _impl("triton:writes", writes_input), "no-such-backend")
    with pytest.warns(CalibrationRejected) as caught:
        records = calibrate(spec, (2, 16), torch.float32, "cpu", backends=candidates, seeds=(3,))
    assert [r.impl for r in records] == ["vendor"]
    assert records[0].evidence.seeds == (3,)
    reasons = {w.message.impl: w.message.reason for w in caught if isinstance(w.message, CalibrationRejected)}
    assert reasons["triton:raises"] == "seed 3: raised RuntimeError: out of resources"
    assert reasons["triton:writes"] == "seed 3: wrote to its inputs"
    assert "unknown backend 'no-such-backend'" in reasons["no-such-backend"]


def test_calibrate_refuses_devices_it_cannot_time():
    with pytest.raises(ValueError, match="cpu and cuda"):
        calibrate(get_spec("softmax"), (2, 8), torch.float32, "meta")


def test_time_cpu_orders_and_scales_with_real_cost():
    args = (torch.zeros(4),)

    def sleeps(x):
        time.sleep(300e-6)

    def free(x):
        return None

    timings = time_cpu({"sleeps": sleeps, "free": free}, args, samples=5)
    slow, fast = timings["sleeps"], timings["free"]
    assert slow.samples == fast.samples == 5
    assert slow.p20_us <= slow.p50_us <= slow.p80_us
    assert slow.p50_us >= 300  # a sleep never returns early
    assert fast.p50_us < 50 < slow.p50_us
    assert slow.host_us == slow.p50_us and slow.kind == "cpu_wall"
