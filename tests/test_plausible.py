"""Implausible timings (`kforge.evaluate.plausible`) are re-timed once, then refused, and never
reach the score table: the rules on the measured H200 cases, calibrate and tune with a fake timer
that stalls once or always, and the harness with a fake worker whose timings stall."""
from __future__ import annotations

import pytest
import torch

from helpers import cpu_device
from kforge.catalog import seeds
from kforge.evaluate import calibrate as calibrate_module
from kforge.evaluate import harness, plausible
from kforge.evaluate.calibrate import ImplausibleTiming, calibrate
from kforge.evaluate.sandbox import Status, WorkerOutcome
from kforge.evaluate.timing import Timing
from kforge.gen import tune
from kforge.ops import get_spec
from kforge.records import Evidence
from kforge.router.table import ScoreTable

SOFTMAX = get_spec("softmax")
RMS = get_spec("rms_norm")
F32 = torch.float32


def t(p50: float, kind: str = "cuda_events", spread: float = 1.1) -> Timing:
    return Timing(p50 / spread, p50, p50 * spread, p50, kind, 50)


# -- the rules ------------------------------------------------------------------------------------
def test_the_measured_h200_stalls_are_implausible_and_honest_timings_are_not():
    # Vendor softmax recorded at 5390 us where it takes 5 us; torch.compile at 6535 us.
    (found,) = plausible.check({"vendor": t(5390.0), "inductor": t(5.0)})
    assert found.impl == "vendor" and "1078x the inductor timing" in found.why
    (found,) = plausible.check({"vendor": t(5.0), "inductor": t(6535.0)})
    assert found.impl == "inductor" and "1307x the vendor timing" in found.why
    # Alone, against the roofline floor (2 us at this key): 5390 us is 1078x a 5 us launch.
    (found,) = plausible.check({"vendor": t(5390.0)}, floor_us=2.0)
    assert "roofline floor" in found.why
    assert plausible.check({"vendor": t(5.2), "inductor": t(4.8)}, floor_us=2.0) == []
    assert plausible.check({"vendor": t(40.0), "inductor": t(60.0)}, floor_us=30.0) == []


def test_a_slow_candidate_is_slow_not_implausible_but_a_stalled_spread_is():
    # Triton's interpreter on a CPU: 1000x vendor, and honest.
    assert plausible.check({"candidate": t(5000.0, "cpu_wall"), "vendor": t(5.0, "cpu_wall")}, floor_us=0.01) == []
    (found,) = plausible.check({"candidate": t(50.0, spread=5.0), "vendor": t(5.0)})
    assert found.impl == "candidate" and "spread 25x" in found.why
    # CPU wall times are not held to the roofline (Python dispatch dominates small calls).
    assert plausible.check({"vendor": t(900.0, "cpu_wall")}, floor_us=0.001) == []


# -- calibrate and tune with a fake timer ------------------------------------------------------------
class FakeTimer:
    """Stands in for calibrate's `measure`: the first `stalls` runs report the vendor at 5390 us
    with its samples spread 1000-fold; later runs report it at 5 us."""

    def __init__(self, stalls: int):
        self.stalls, self.runs = stalls, 0

    def __call__(self, fns, args):
        self.runs += 1
        if self.runs <= self.stalls:
            return {name: Timing(5.0, 5390.0, 6000.0, 5390.0, "cpu_wall", 20) for name in fns}
        return {name: Timing(4.9, 5.0, 5.1, 5.0, "cpu_wall", 20) for name in fns}


def test_calibrate_retimes_a_stalled_run_once_and_keeps_the_second(monkeypatch):
    timer = FakeTimer(stalls=1)
    monkeypatch.setattr(calibrate_module, "measure", timer)
    (record,) = calibrate(SOFTMAX, (3, 40), F32, "cpu", backends=("vendor",), seeds=(0,))
    assert timer.runs == 2 and record.p50_us == 5.0


def test_calibrate_refuses_a_run_that_stalls_twice_naming_op_key_and_numbers(monkeypatch):
    timer = FakeTimer(stalls=99)
    monkeypatch.setattr(calibrate_module, "measure", timer)
    with pytest.raises(ImplausibleTiming) as caught:
        calibrate(SOFTMAX, (3, 40), F32, "cpu", backends=("vendor",), seeds=(0,))
    message = str(caught.value)
    assert timer.runs == 2 and caught.value.op == "softmax" and caught.value.key.shape == (3, 40)
    assert "softmax[float32]3x40" in message and "5.00/5390.00/6000.00 us" in message and "spread 1200x" in message


def test_tune_records_nothing_at_a_key_whose_timing_stalls_twice_and_says_why(monkeypatch):
    monkeypatch.setattr(calibrate_module, "measure", FakeTimer(stalls=99))
    report = tune.tune([tune.TuneKey("softmax", F32, (3, 40))], device="cpu", inductor=False, candidates=False)
    (outcome,) = report.keys
    assert outcome.recorded == [] and "implausible timing of softmax" in outcome.reason
    assert list(ScoreTable().all_records()) == []

    monkeypatch.setattr(calibrate_module, "measure", FakeTimer(stalls=1))
    report = tune.tune([tune.TuneKey("softmax", F32, (3, 40))], device="cpu", inductor=False, candidates=False)
    assert report.keys[0].recorded == ["vendor"]
    assert [r.p50_us for _, r in ScoreTable().all_records()] == [5.0]


# -- the harness with a fake worker ---------------------------------------------------------------------
class FakeWorker:
    """An executor whose worker accepts the candidate at rms_norm (4, 64) fp32 and reports the
    vendor stalled on its first `stalls` runs."""

    def __init__(self, stalls: int):
        self.stalls, self.runs = stalls, 0

    def map(self, tasks):
        self.runs += 1
        vendor = (Timing(5.0, 5390.0, 6000.0, 5390.0, "cpu_wall", 20) if self.runs <= self.stalls
                  else Timing(4.9, 5.0, 5.1, 5.0, "cpu_wall", 20))
        candidate = Timing(19.0, 20.0, 21.0, 20.0, "cpu_wall", 20)
        evidence = Evidence(("float32,float32",), ((4, 64),), (0, 1, 2), 0.2)
        value = {"verdict": {"accepted": True, "reason": "", "check": None, "case": None,
                             "evidence": evidence.to_json()},
                 "timings": [{"shape": [4, 64], "dtype": "float32", "dtypes": "float32,float32", "problem": [4, 64],
                              "timings": {"candidate": candidate.to_json(), "vendor": vendor.to_json()}}],
                 "skipped": [], "domain": {}, "phases": {"load_s": 0.1}}
        return [WorkerOutcome(Status.OK, value=value) for _ in tasks]


def evaluate(worker: FakeWorker):
    source = seeds(RMS)[0].read_text()
    return harness.evaluate_source(source, RMS, device="cpu", dtypes=[F32], timing_shapes=[(4, 64)],
                                   verify_shapes=[(4, 64)], executor=worker)


def test_the_harness_retimes_a_stalled_key_once_and_records_the_second_timing():
    worker = FakeWorker(stalls=1)
    result = evaluate(worker)
    assert worker.runs == 2 and result.accepted and result.skipped == [] and result.recorded
    assert {r.impl.split(":")[0]: r.p50_us for r in result.records} == {"triton": 20.0, "vendor": 5.0}


def test_the_harness_puts_a_key_that_stalls_twice_in_skipped_and_writes_nothing():
    worker = FakeWorker(stalls=99)
    result = evaluate(worker)
    assert worker.runs == 2 and result.accepted and result.records == [] and result.measurements == []
    (skipped,) = result.skipped
    assert skipped["shape"] == [4, 64] and "implausible timing" in skipped["why"] and "5390.00" in skipped["why"]
    assert ScoreTable().records(cpu_device(), "rms_norm") == []
