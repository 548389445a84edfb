"""`kforge demo`'s account of its own time (phases) and its output kept free of torch's notes; the
demo end to end is in test_cli.py."""
from __future__ import annotations

import json
import warnings

import pytest

from kforge.cli import demo
from kforge.cli._demo_report import print_result, time_text
from kforge.cli._output import wrap
from kforge.device import DeviceFingerprint

# Vendor only, one op, no generation: a few seconds on a CPU.
QUICK = ("demo", "--quick", "--ops", "rms_norm", "--backends", "vendor", "--no-generate", "--device", "cpu")

# The texts of torch 2.11's two notes as an H200 demo printed them (this torch may not emit them).
ONLINE_SOFTMAX = ("\nOnline softmax is disabled on the fly since Inductor decides to\nsplit the reduction. Cut an "
                  "issue to PyTorch if this is an\nimportant use case and you want to speed it up with online\n"
                  "softmax.\n")
TF32 = ("TensorFloat32 tensor cores for float32 matrix multiplication available but not enabled. Consider setting "
        "`torch.set_float32_matmul_precision('high')` for better performance.")


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    from kforge.cli.main import main

    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_the_result_says_how_long_each_phase_took(kforge_home, capsys):
    rc, out, err = run_main(capsys, *QUICK, "--json")
    assert rc == 0, err
    result = json.loads(out)
    phases = result["phases"]
    assert list(phases) == ["startup", "calibrate", "route"]  # in order; no generate with --no-generate
    assert all(s > 0 for s in phases.values()), phases
    # "seconds" is rounded to 0.1, each phase to 0.001 (a sum of 2.45 against 2.4 failed by a float's last bit)
    assert sum(phases.values()) <= result["seconds"] + 0.05 + 0.0005 * len(phases) + 1e-9
    assert phases["calibrate"] > phases["startup"]  # calibration times two keys; startup parses flags
    assert result["generate_seconds"] == {}
    before = result["process_start_seconds"]  # pytest's process: it started before this test
    assert before is None or before > 0

    print_result(result, DeviceFingerprint.parse(result["device"]))
    last = capsys.readouterr().out.rstrip().split("\n\n")[-1]  # the last paragraph, wrapped to 100 columns
    assert last == wrap(time_text(result)) and max(len(line) for line in last.splitlines()) <= 100
    assert last.startswith(f"time: {result['seconds']} s in the demo: startup ")
    assert all(f"{name} {seconds:.1f} s" in last for name, seconds in phases.items())


def test_the_time_line_names_each_ops_generate_run():
    result = {"seconds": 50.2, "phases": {"startup": 0.5, "calibrate": 20.0, "route": 9.7, "generate": 15.0,
                                          "reroute": 5.0},
              "generate_seconds": {"gemv": 8.04, "softmax": 6.96}, "process_start_seconds": 4.25}
    assert time_text(result) == (
        "time: 50.2 s in the demo: startup 0.5 s, calibrate 20.0 s, route 9.7 s, generate 15.0 s "
        "(gemv 8.0, softmax 7.0), reroute 5.0 s; 4.2 s before it (Python, torch and kforge imports)")


def test_torchs_notes_stay_out_of_the_demo_and_kforges_warnings_do_not(kforge_home, capsys, monkeypatch):
    """The two notes torch's Inductor printed 8 times in one H200 demo are dropped, inside calibration
    (whose capture re-emits what it does not handle) and outside it; a kforge warning and torch's
    other warnings still reach the user; outside the demo the notes are shown as before."""
    calibrate, route_one = demo.calibrate, demo.route_one

    def noisy(fn):
        def call(*args, **kwargs):
            warnings.warn(ONLINE_SOFTMAX, UserWarning)
            warnings.warn(TF32, UserWarning)
            warnings.warn("kforge: the user's own warning", UserWarning)
            warnings.warn("torch: TypedStorage is deprecated", UserWarning)
            return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(demo, "calibrate", noisy(calibrate))
    monkeypatch.setattr(demo, "route_one", noisy(route_one))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, _, err = run_main(capsys, *QUICK, "--json")
    assert rc == 0, err
    texts = [str(w.message) for w in caught]
    assert not [t for t in texts if "Online softmax" in t or "TensorFloat32" in t], texts
    # Two calibrated keys, six routed calls: each passes its warnings on.
    assert texts.count("kforge: the user's own warning") == 8
    assert texts.count("torch: TypedStorage is deprecated") == 8

    with pytest.warns(UserWarning, match="Online softmax"):  # the demo's filter left with it
        warnings.warn(ONLINE_SOFTMAX, UserWarning)
    with demo.torch_notes_hidden(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)  # a later filter of another category
        warnings.warn(TF32, UserWarning)
        warnings.warn(ONLINE_SOFTMAX.replace("Online", "Offline"), UserWarning)
    assert [str(w.message) for w in caught] == [ONLINE_SOFTMAX.replace("Online", "Offline")]


def test_the_executor_warms_a_spare_before_calibration_and_the_first_search_takes_it(kforge_home, capsys,
                                                                                    monkeypatch):
    """On GPU slots (here CPU slots with KFORGE_WARM_WORKERS=1, the same code path) the spare's
    imports overlap calibration: it is idle when calibration starts, and the first op's search
    runs its candidate in it instead of starting a worker."""
    from kforge.evaluate import executors

    monkeypatch.setenv(executors.WARM_ENV, "1")
    pools, idle_at_calibration = [], []

    class Pool(executors.LocalPoolExecutor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)

    calibrate = demo.calibrate

    def calibrating(*args, **kwargs):
        idle_at_calibration.append(pools[0].spares.idle() if pools else None)
        return calibrate(*args, **kwargs)

    monkeypatch.setattr(executors, "LocalPoolExecutor", Pool)
    monkeypatch.setattr(demo, "calibrate", calibrating)
    rc, out, err = run_main(capsys, "demo", "--quick", "--ops", "softmax", "--backends", "vendor", "--device", "cpu",
                            "--json")
    assert rc == 0, err
    (pool,) = pools
    assert idle_at_calibration[0] == 1  # started ahead of calibration, waiting
    assert pool.spares.taken >= 1 and pool.spares.idle() == 0  # taken by the search; the rest closed
    (run,) = json.loads(out)["generated"]
    assert run["accepted"] == 1
