"""`kforge tune` and background tuning: a key no shape set names goes miss -> tune -> a record at exactly
that key -> served from the table; the time budget stops a run between candidates and keeps what
was done; a background child fills a key while calls keep being served, and a killed one breaks
nothing."""
from __future__ import annotations

import json
import logging
import os
import signal
import sys

import pytest
import torch

import kforge
from kforge.cli.main import main
from kforge.device import fingerprint
from kforge.evaluate import harness
from kforge.gen import tune
from kforge.router import background, dispatch
from kforge.router.table import ScoreTable

CPU = str(fingerprint("cpu"))
UNNAMED = (5, 203)  # in no shape set of rms_norm


def run_main(capsys, *argv):
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def records_at(op: str, problem: tuple) -> dict:
    return {r.impl: r for r in ScoreTable().records(CPU, op) if r.key.shape == problem}


def kind_of_next_call(op: str, args: tuple) -> dict:
    before = kforge.stats()["ops"].get(op, {})
    getattr(kforge.ops, op)(*args)
    after = kforge.stats()["ops"][op]
    return {k: after[k] - before.get(k, 0) for k in ("hit", "miss", "fallback")}


def test_a_missed_shape_is_tuned_to_a_verified_record_at_exactly_that_key_and_then_hits(capsys):
    spec = kforge.ops.get_spec("rms_norm")
    assert UNNAMED not in spec.shapes(*spec.shape_sets)
    args = spec.make_inputs(UNNAMED, torch.float32, "cpu", 0)
    assert kind_of_next_call("rms_norm", args) == {"hit": 0, "miss": 1, "fallback": 0}
    kforge.flush()

    rc, out, err = run_main(capsys, "tune", "--from-misses", "--device", "cpu", "--no-inductor", "--json")
    assert rc == 0, err
    report = json.loads(out)
    (key,) = report["keys"]
    assert (key["op"], tuple(key["shape"]), key["dtype"]) == ("rms_norm", UNNAMED, "float32")
    (candidate,) = report["candidates"]  # the op's one catalog seed, through the sandboxed harness
    assert candidate["verdict"] == "accepted" and candidate["origin"] == "catalog:rms_norm_rowwise.py"
    assert set(key["recorded"]) == {"vendor", candidate["impl"]}
    here = records_at("rms_norm", UNNAMED)
    assert set(here) == {"vendor", candidate["impl"]}
    assert UNNAMED in here[candidate["impl"]].evidence.shapes  # verified at the key itself, not near it
    assert key["routed"] == min(here.values(), key=lambda r: (r.score_us, r.impl)).impl
    assert "[3/3]" not in err and "[2/2]" in err  # progress: one calibration, one candidate

    dispatch.reset()  # as a new process: decisions re-made from the table
    assert kind_of_next_call("rms_norm", args) == {"hit": 1, "miss": 0, "fallback": 0}


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_time_budget_stops_between_candidates_and_keeps_what_was_done(monkeypatch, steady_calibrate):
    clock = FakeClock()
    monkeypatch.setattr(tune.time, "monotonic", clock)
    timeouts = []

    def slow_rejection(source, spec, **kwargs):  # each candidate "takes" 100 s
        timeouts.append(kwargs["timeout_s"])
        clock.now += 100
        return harness.Evaluation(spec.name, False, "fake: wrong at (4, 64)", check="error_budget")

    monkeypatch.setattr(harness, "evaluate_source", slow_rejection)
    keys = [tune.TuneKey("softmax", torch.float32, (3, 40)), tune.TuneKey("softmax", torch.float32, (2, 77))]
    report = tune.tune(keys, device="cpu", inductor=False, max_seconds=150)
    assert [c.verdict for c in report.candidates] == ["rejected", "rejected", "not run"]
    assert timeouts == [150, 50]  # the second started at 100 s: what is left of the budget
    assert report.stopped.startswith("time budget spent: 200 s >= 150 s")
    assert {tuple(k.problem) for k in report.keys} == {(3, 40), (2, 77)}
    for k in report.keys:  # the calibrations done before the budget ran out stay recorded and routed
        assert k.recorded == ["vendor"] and k.routed == "vendor", k.reason
        assert set(records_at("softmax", k.problem)) == {"vendor"}


def test_a_candidate_cut_short_by_the_budget_is_not_finished_not_rejected(monkeypatch, steady_calibrate):
    clock = FakeClock()
    monkeypatch.setattr(tune.time, "monotonic", clock)

    def killed_at_the_budget(source, spec, **kwargs):
        clock.now += kwargs["timeout_s"]
        return harness.Evaluation(spec.name, False, f"worker timeout: no result after {kwargs['timeout_s']} s")

    monkeypatch.setattr(harness, "evaluate_source", killed_at_the_budget)
    keys = [tune.TuneKey("softmax", torch.float32, (3, 40))]
    report = tune.tune(keys, device="cpu", inductor=False, max_seconds=150)
    first, *rest = report.candidates
    assert first.verdict == "not finished" and first.reason.startswith("time budget spent while it ran")
    assert all(c.verdict == "not run" for c in rest)


def test_a_key_too_big_for_device_memory_is_named_and_the_run_goes_on(monkeypatch, steady_calibrate):
    """The reference's fp64 copies of a prefill key (cross_entropy 16384x256000: 31 GiB at once)
    ran an H200 out of memory and the run died with a traceback; now that key alone is left out,
    also of the candidates' workers, and the others are tuned."""
    from kforge.evaluate import calibrate as calibrate_module

    big, small = (7, 96), (3, 40)
    real = calibrate_module.calibrate

    def calibrate(spec, shape, dtype, device, **kwargs):
        if tuple(shape) == big:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 31.25 GiB.\nmore detail")
        return real(spec, shape, dtype, device, **kwargs)

    seen = []

    def evaluate(source, spec, **kwargs):
        seen.append([tuple(s) for s in kwargs["timing_shapes"]])
        return harness.Evaluation(spec.name, False, "fake: wrong")

    monkeypatch.setattr(calibrate_module, "calibrate", calibrate)
    monkeypatch.setattr(harness, "evaluate_source", evaluate)
    keys = [tune.TuneKey("softmax", torch.float32, s) for s in (big, small)]
    report = tune.tune(keys, device="cpu", inductor=False)
    outcome = {tuple(k.problem): k for k in report.keys}
    assert outcome[big].reason.startswith("out of device memory verifying vendor here (OutOfMemoryError: "
                                          "CUDA out of memory. Tried to allocate 31.25 GiB.)")
    assert outcome[big].recorded == [] and outcome[small].recorded == ["vendor"]
    assert seen and all(shapes == [small] for shapes in seen)  # no worker is sent to the key that cannot fit


def test_a_worker_out_of_device_memory_is_run_again_at_the_smaller_half_of_the_keys(monkeypatch, steady_calibrate):
    """cross_entropy's seeds were rejected at all 26 keys of 20 models because the verifier's fp64
    copies of the 16384-token keys did not fit a worker's cap; the smaller keys are now verified
    again without them."""
    sizes = [(2, 40), (3, 40), (5, 40), (64, 40), (128, 40)]
    calls = []

    def evaluate(source, spec, **kwargs):
        shapes = [tuple(s) for s in kwargs["timing_shapes"]]
        calls.append(shapes)
        if max(r for r, _ in shapes) >= 64:
            return harness.Evaluation(spec.name, False, "worker killed: over its device-memory cap: OutOfMemoryError")
        return harness.Evaluation(spec.name, True, "")

    monkeypatch.setattr(harness, "evaluate_source", evaluate)
    keys = [tune.TuneKey("softmax", torch.float32, s) for s in reversed(sizes)]
    report = tune.tune(keys, device="cpu", inductor=False)
    first = report.candidates[0]
    assert calls[0] == list(reversed(sizes)) and calls[1] == sizes[:2]  # the smaller half, by size
    assert first.verdict == "accepted" and first.keys == 2
    assert first.reason == ("verified at the 2 smallest of 5 keys: the worker ran out of device memory "
                            "verifying the larger ones")


def test_a_rejection_that_is_not_out_of_memory_is_not_retried(monkeypatch, steady_calibrate):
    calls = []

    def evaluate(source, spec, **kwargs):
        calls.append(kwargs["timing_shapes"])
        return harness.Evaluation(spec.name, False, "(3, 40): error over budget")

    monkeypatch.setattr(harness, "evaluate_source", evaluate)
    keys = [tune.TuneKey("softmax", torch.float32, s) for s in ((3, 40), (64, 40))]
    report = tune.tune(keys, device="cpu", inductor=False)
    assert len(calls) == len(report.candidates) and all(c.verdict == "rejected" for c in report.candidates)


class TwoGpus:
    """An executor that says it has two GPUs (the harness is faked: nothing runs on it)."""

    def timing_slots(self) -> int:
        return 2

    def warm_up(self, trusted=False):
        pass


def test_candidates_run_one_per_gpu_at_once_after_every_calibration(monkeypatch, steady_calibrate):
    import threading

    from kforge.evaluate import calibrate as calibrate_module

    running, most, lock, order = [0], [0], threading.Lock(), []
    both = threading.Barrier(2, timeout=10)  # two candidates must be in flight together to pass it
    fixed = calibrate_module.calibrate

    def calibrate(spec, shape, dtype, device, **kwargs):
        order.append(("calibrate", spec.name))
        return fixed(spec, shape, dtype, device, **kwargs)

    def evaluate(source, spec, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            order.append(("candidate", spec.name))
        both.wait()
        with lock:
            running[0] -= 1
        return harness.Evaluation(spec.name, False, "fake: wrong")

    monkeypatch.setattr(calibrate_module, "calibrate", calibrate)
    monkeypatch.setattr(harness, "evaluate_source", evaluate)
    keys = [tune.TuneKey("softmax", torch.float32, (3, 40)), tune.TuneKey("rms_norm", torch.float32, (3, 40))]
    report = tune.tune(keys, device="cpu", inductor=False, executor=TwoGpus())
    seeds = len(tune.sources_for(kforge.ops.get_spec("softmax"))) + len(tune.sources_for(kforge.ops.get_spec("rms_norm")))
    assert len(report.candidates) == seeds and most[0] == 2  # never more than the GPUs, and both busy
    assert seeds % 2 == 0  # the barrier pairs them up
    first_candidate = next(i for i, (kind, _) in enumerate(order) if kind == "candidate")
    assert all(kind == "calibrate" for kind, _ in order[:first_candidate]) and first_candidate == 2
    assert [c.op for c in report.candidates] == sorted((c.op for c in report.candidates), key=["softmax", "rms_norm"].index)


def test_a_spent_budget_runs_nothing_and_the_command_says_why(capsys):
    rc, out, err = run_main(capsys, "tune", "softmax", "--shape", "3x40", "--dtype", "fp32", "--device", "cpu",
                            "--max-seconds", "0", "--json")
    assert rc == 1
    report = json.loads(out)
    assert report["stopped"].startswith("time budget spent")
    assert report["keys"][0]["recorded"] == [] and report["keys"][0]["reason"].startswith("time budget spent")
    assert {c["verdict"] for c in report["candidates"]} == {"not run"} and len(report["candidates"]) == 3
    assert list(ScoreTable().all_records()) == []


@pytest.mark.parametrize("argv, message", [
    ((), "name what to tune"),
    (("--key", "rms_norm:int8:3x4"), "--dtype 'int8'"),
    (("--key", "nosuch:bf16:3x4"), "nosuch"),
    (("--key", "rms_norm:bf16"), "expected OP:DTYPE:SHAPE"),
    (("--shape", "3x4"), "give the op first"),
    (("--model", "llama-3.1-8b", "--tokens", "1,x"), "--tokens '1,x'"),
    (("--from-misses", "--ops", "rms_norm,nosuch"), "nosuch"),
])
def test_bad_keys_are_named_before_any_work(capsys, argv, message):
    rc, out, err = run_main(capsys, "tune", "--device", "cpu", *argv)
    assert rc == 1 and message in err and out == ""
    assert list(ScoreTable().all_records()) == []


def test_a_key_is_read_as_the_op_takes_it():
    from kforge.cli.tune import parse_key

    assert parse_key("cross_entropy:fp16:3x40") == tune.TuneKey("cross_entropy", torch.float16, (3, 40))
    assert parse_key("gemv:bfloat16:1x64x32") == tune.TuneKey("gemv", torch.bfloat16, (1, 64, 32))


def test_kforge_tune_runs_in_a_child_and_the_router_serves_its_records_at_the_next_call():
    args = kforge.ops.get_spec("softmax").make_inputs((3, 41), torch.float32, "cpu", 0)
    assert kind_of_next_call("softmax", args)["miss"] == 1
    report = kforge.tune(("softmax", (3, 41), torch.float32), device="cpu", inductor=False, candidates=False)
    assert [(k["op"], k["recorded"], k["routed"]) for k in report["keys"]] == [("softmax", ["vendor"], "vendor")]
    assert kind_of_next_call("softmax", args)["hit"] == 1
    with pytest.raises(kforge.KforgeInputError, match="kforge.tune: argument 'calls'.*triples"):
        kforge.tune(("softmax", (3, 41)))
    with pytest.raises(kforge.KforgeInputError, match="kforge.tune: argument 'calls'.*dtype"):
        kforge.tune(("softmax", (3, 41), torch.int32))
    with pytest.raises(kforge.KforgeInputError, match="background=True"):
        kforge.tune()


def vendor_only(monkeypatch):
    plain = background.command

    def command(keys, device, **kwargs):
        return plain(keys, device, **kwargs) + ["--no-inductor", "--no-candidates"]

    monkeypatch.setattr(background, "command", command)


def test_background_tuning_fills_a_missing_key_while_calls_keep_being_served(monkeypatch):
    vendor_only(monkeypatch)
    tuner = background.Tuner(after_calls=3, budget_s=60)
    monkeypatch.setattr(dispatch.ROUTER, "tuner", tuner)
    args = kforge.ops.get_spec("softmax").make_inputs((2, 99), torch.float32, "cpu", 0)
    quiet = kforge.ops.get_spec("softmax").make_inputs((2, 98), torch.float32, "cpu", 0)
    for _ in range(3):
        kforge.ops.softmax(*args)
    kforge.ops.softmax(*quiet)  # called once: under the threshold, never tuned
    tuner.offer_from(dispatch.ROUTER)
    assert tuner.running == {CPU: ["softmax:float32:2x99"]}
    assert kind_of_next_call("softmax", args)["miss"] == 1  # served at once while the child works
    (done,) = tuner.wait(timeout=120)
    assert done["exit_code"] == 0 and done["keys"] == ["softmax:float32:2x99"]
    assert set(records_at("softmax", (2, 99))) == {"vendor"} and records_at("softmax", (2, 98)) == {}
    dispatch.ROUTER.next_check = 0.0  # the periodic table check, due now
    assert kind_of_next_call("softmax", args) == {"hit": 1, "miss": 0, "fallback": 0}
    tuner.offer_from(dispatch.ROUTER)
    assert tuner.children == {}  # a key is offered once per process


def test_a_killed_background_worker_changes_nothing_but_a_log_line(monkeypatch, caplog):
    monkeypatch.setattr(background, "command", lambda keys, device, **kw: [sys.executable, "-c", "import time; time.sleep(60)"])
    tuner = background.Tuner(after_calls=1, budget_s=60)
    monkeypatch.setattr(dispatch.ROUTER, "tuner", tuner)
    args = kforge.ops.get_spec("softmax").make_inputs((2, 97), torch.float32, "cpu", 0)
    expected = torch.softmax(args[0].double(), -1).float()
    kforge.ops.softmax(*args)
    tuner.offer_from(dispatch.ROUTER)
    (child,) = tuner.children.values()
    os.killpg(child.pid, signal.SIGKILL)
    with caplog.at_level(logging.WARNING, logger="kforge"):
        (done,) = tuner.wait(timeout=30)
    assert done["exit_code"] == -signal.SIGKILL
    assert "background tuning of 1 key(s)" in caplog.text and "exit code -9" in caplog.text
    torch.testing.assert_close(kforge.ops.softmax(*args), expected)  # still served, by vendor
    assert list(ScoreTable().all_records()) == []


def test_background_tuning_is_off_unless_asked_and_a_wrong_mode_is_named(monkeypatch, caplog):
    monkeypatch.delenv("KFORGE_TUNE", raising=False)
    assert not background.enabled()
    monkeypatch.setenv("KFORGE_TUNE", "backgrund")
    with caplog.at_level(logging.WARNING, logger="kforge"):
        assert not background.enabled()
    assert "KFORGE_TUNE='backgrund' is not a mode" in caplog.text
    monkeypatch.setenv("KFORGE_TUNE", "background")
    assert background.enabled()
    assert dispatch.Router().tuner is not None


def test_evaluate_says_why_an_accepted_kernel_got_no_record_and_exits_non_zero(capsys, monkeypatch, tmp_path):
    from kforge.records import Evidence

    skipped = [{"shape": [2, 70000], "dtype": "float32", "why": "hidden=70000 outside [1, 65536]"}]
    accepted = harness.Evaluation("rms_norm", True, "", "ab" * 32, "triton:abababababab", skipped=skipped,
                                  evidence=Evidence(("float32,float32",), ((4, 64),), (0,), 0.1))
    monkeypatch.setattr(harness, "evaluate_source", lambda *a, **kw: accepted)
    kernel = tmp_path / "k.py"
    kernel.write_text("# a kernel\n")
    rc, out, _ = run_main(capsys, "evaluate", str(kernel), "--op", "rms_norm", "--shape", "2x70000", "--device", "cpu")
    assert rc == 1 and out.startswith("ACCEPTED")
    assert "nothing recorded: every timing shape is outside the kernel's DOMAIN (2x70000 float32: hidden=70000" in out
    rc, out, _ = run_main(capsys, "evaluate", str(kernel), "--op", "rms_norm", "--device", "cpu", "--no-record", "--json")
    assert rc == 0 and json.loads(out)["not_recorded"] is None  # nothing was asked to be recorded


def test_a_models_keys_come_from_the_shapes_data_file():
    import argparse

    from kforge import shapes
    from kforge.cli import tune as tune_cli

    parser = argparse.ArgumentParser()
    tune_cli.add_arguments(parser)
    args = parser.parse_args(["--model", "Qwen/Qwen2.5-7B", "--tokens", "1,16", "--ops", "rms_norm,gemv"])
    keys = tune_cli.keys_from_args(args, "cpu")
    assert tune.TuneKey("rms_norm", torch.bfloat16, (16, 3584)) in keys  # hidden 3584
    assert {k.op for k in keys} == {"rms_norm", "gemv"}
    expected = shapes.keys("qwen2.5-7b", tokens=[1, 16], ops=["rms_norm", "gemv"])
    assert keys == [tune.TuneKey(op, d, tuple(s)) for op, found in expected.items() for s, d in found]
    with pytest.raises(kforge.UnknownNameError, match="qwen3-30b-a3b"):
        tune_cli.keys_from_args(parser.parse_args(["--model", "Qwen3-30B"]), "cpu")
