"""kforge.evaluate.roofline: the classification rule on synthetic numbers, the floor and the
implausibility flag, and the ceilings cache (measured once per fingerprint, corrupt files recovered)."""
from __future__ import annotations

import json

import pytest

from kforge.device import fingerprint
from kforge.evaluate import roofline
from kforge.evaluate.roofline import Ceilings, classify, floor_us, implausible

H100ISH = Ceilings(copy_gbps=3000.0, matmul_tflops=800.0, device="cuda|test|sm90|torch2.13|triton3.9",
                   measured_at="2026-01-01T00:00:00+00:00")


def test_memory_bound():
    r = classify(3e9, 1e9, 2000.0, H100ISH)  # bytes floor 1000 us, FLOP floor 1.25 us
    assert r.bound == "memory"
    assert r.gbps == pytest.approx(1500.0) and r.tflops == pytest.approx(0.5)
    assert r.floor_us == pytest.approx(1000.0) and r.fraction_of_ceiling == pytest.approx(0.5)


def test_compute_bound():
    r = classify(1e8, 8e11, 1250.0, H100ISH)  # FLOP floor 1000 us, bytes floor 33 us
    assert r.bound == "compute"
    assert r.tflops == pytest.approx(640.0) and r.fraction_of_ceiling == pytest.approx(0.8)


@pytest.mark.parametrize("nbytes, time_us, bound", [
    (3e9, 4.0, "latency"),      # under LATENCY_US, whatever the floor says
    (3e6, 20.0, "latency"),     # 1 us floor, 20 us measured: fixed costs set the time
    (12e6, 12.0, "memory"),     # 4 us floor is a third of 12 us: bytes matter
    (3e7, 40.0, "memory"),      # 10 us floor: not a tiny problem, however slow
])
def test_latency_rule(nbytes, time_us, bound):
    assert classify(nbytes, 0, time_us, H100ISH).bound == bound


def test_floor_and_implausible():
    assert floor_us(3e9, 8e11, H100ISH) == pytest.approx(1000.0)  # both terms 1000 us
    assert floor_us(3e6, 0, H100ISH) == pytest.approx(1.0)
    assert implausible(70.0, 100.0)  # 1.43x the copy ceiling
    assert not implausible(90.0, 100.0) and not implausible(150.0, 100.0)
    assert not implausible(1.0, 0.0)
    with pytest.raises(ValueError, match="positive time"):
        classify(1, 1, 0.0, H100ISH)


def test_ceilings_validate_and_round_trip():
    assert Ceilings.from_json(json.loads(json.dumps(H100ISH.to_json()))) == H100ISH
    with pytest.raises(ValueError, match="copy_gbps"):
        Ceilings(copy_gbps=0.0, matmul_tflops=1.0, device="x", measured_at="t")


@pytest.fixture
def counted(monkeypatch):
    """measure_ceilings replaced by a counter returning fixed numbers for the asked device."""
    calls = []

    def fake(device):
        calls.append(str(device))
        return Ceilings(copy_gbps=10.0, matmul_tflops=0.1, device=str(fingerprint(device)),
                        measured_at="2026-01-01T00:00:00+00:00", kind="cpu", matmul_dtype="float32")

    monkeypatch.setattr(roofline, "measure_ceilings", fake)
    return calls


def test_ceilings_measured_once_then_read_from_the_cache(counted, kforge_home):
    first = roofline.ceilings("cpu")
    assert counted == ["cpu"]
    path = kforge_home / "ceilings.json"
    data = json.loads(path.read_text())
    assert data["schema_version"] == roofline.SCHEMA_VERSION
    assert list(data["ceilings"]) == [str(fingerprint("cpu"))]
    written = path.stat().st_mtime_ns
    assert roofline.ceilings("cpu") == first
    assert counted == ["cpu"] and path.stat().st_mtime_ns == written
    assert roofline.ceilings("meta") is None and counted == ["cpu"]


@pytest.mark.parametrize("garbage", ["{not json", json.dumps({"schema_version": 99, "ceilings": {}}),
                                     json.dumps({"schema_version": 1, "ceilings": {"cpu|x": {"copy_gbps": -1}}})])
def test_corrupt_cache_is_set_aside_and_measured_again(counted, kforge_home, garbage):
    path = kforge_home / "ceilings.json"
    path.parent.mkdir(parents=True)
    path.write_text(garbage)
    with pytest.warns(UserWarning, match="ceilings cache .* unreadable"):
        c = roofline.ceilings("cpu")
    assert counted == ["cpu"] and c.copy_gbps == 10.0
    assert str(fingerprint("cpu")) in json.loads(path.read_text())["ceilings"]
    assert [p.read_text() for p in kforge_home.glob("ceilings.json.corrupt-*")] == [garbage]


def test_cpu_ceilings_are_measured_and_labelled():
    c = roofline.measure_ceilings("cpu")
    assert c.kind == "cpu" and c.matmul_dtype == "float32" and c.device == str(fingerprint("cpu"))
    assert 0.1 < c.copy_gbps < 10_000 and 1e-4 < c.matmul_tflops < 1_000
