"""The harness end to end on a CPU (Triton interpreter): static checks here, verification and
timing in sandboxed workers, records written, and the router serving accepted kernels."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kforge
from kforge.catalog import seeds
from kforge.ops import SPECS
from kforge.evaluate import harness, roofline
from kforge.evaluate.executors import LocalPoolExecutor
from kforge.router.table import ScoreTable
from kforge.store import KernelStore
from kforge.testing import assert_matches_reference

from helpers import cpu_device

TESTS = Path(__file__).resolve().parent
F32 = torch.float32


@pytest.fixture(scope="module")
def pool():
    return LocalPoolExecutor(workers=2)


@pytest.mark.parametrize("op, path", [("rms_norm", seeds(SPECS["rms_norm"])[0]),
                                      ("softmax", TESTS / "candidates" / "softmax_rowwise.py")])
def test_a_good_candidate_is_accepted_recorded_and_served(op, path, pool):
    result = harness.evaluate_source(path.read_text(), op, dtypes=[F32], timing_shapes=[(4, 64)], executor=pool)
    assert result.accepted, result.reason
    assert result.impl == f"triton:{result.sha256[:12]}"
    (m,) = result.measurements
    assert m.candidate.kind == "cpu_wall" and m.vendor.kind == "cpu_wall"  # never GPU timings
    assert m.candidate.p50_us > 0 and m.vendor.p50_us > 0
    records = {r.impl: r for r in ScoreTable().records(cpu_device(), op)}
    assert set(records) == {result.impl, "vendor"}
    assert records[result.impl].source_sha256 == result.sha256
    assert records[result.impl].key.shape == (4, 64)
    assert KernelStore().verdict_problem(result.sha256, op) is None  # the verdict the Triton backend requires
    # The router may serve it: pinned, the call runs the stored kernel and is right.
    spec = kforge.ops.SPECS[op]
    args = spec.make_inputs((4, 64), F32, "cpu", 7)
    kforge.reset()
    with kforge.use(op, result.impl):
        out = kforge.ops.ENTRIES[op](*args)
    assert_matches_reference(spec, args, out)
    assert kforge.stats()["ops"][op]["by_impl"] == {result.impl: 1}


@pytest.mark.parametrize("op, shape, long_row", [("softmax", (8, 200), True), ("gemv", (8, 100, 64), False)])
def test_given_verify_shapes_keep_the_long_row_of_a_row_op_only(op, shape, long_row, pool):
    """The long row (2, 16384) checks fp16 accumulation along a row op's row; a gemv given shapes
    is verified without it (made as gemv's inputs, it is k = 2 with 16384 outputs)."""
    spec = SPECS[op]
    result = harness.evaluate_source(seeds(spec)[0].read_text(), op, dtypes=[F32], timing_shapes=[shape],
                                     verify_shapes=[shape], executor=pool, record=False)
    assert result.accepted, result.reason
    problem = tuple(spec.problem(spec.make_inputs(shape, F32, "meta", 0)))
    long_problem = tuple(spec.problem(spec.make_inputs((2, 16384), F32, "meta", 0)))
    assert problem in result.evidence.shapes
    assert (long_problem in result.evidence.shapes) is long_row, result.evidence.shapes


def test_a_static_cheat_is_rejected_before_anything_runs(pool):
    source = (TESTS / "adversarial" / "kills_process.py").read_text()
    result = harness.evaluate_source(source, "softmax", dtypes=[F32], executor=pool)
    assert not result.accepted and result.check.startswith("static:")
    assert result.sha256 is None  # never stored, never run
    assert ScoreTable().records(cpu_device(), "softmax") == []


def test_a_dynamic_cheat_is_rejected_with_its_reason(pool):
    # cached_output.py, once used here, now fails the static check (module state); this one passes it.
    source = (TESTS / "adversarial" / "returns_input.py").read_text()
    result = harness.evaluate_source(source, "rms_norm", dtypes=[F32], executor=pool)
    assert not result.accepted
    assert result.check == "aliases-input" and "aliases input 'x'" in result.reason
    assert KernelStore().verdict_problem(result.sha256, "rms_norm") is not None  # no verdict for a rejection
    assert ScoreTable().records(cpu_device(), "rms_norm") == []


def test_a_candidate_that_hangs_inside_its_kernel_times_out(pool):
    source = '''
import torch
import triton
import triton.language as tl


@triton.jit
def _spin(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    i = 0
    while i >= 0:  # never ends; the static check cannot know
        i += 1
    offs = tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)


def forward(x):
    y = torch.empty_like(x)
    _spin[(1,)](x, y, x.numel(), BLOCK=triton.next_power_of_2(x.numel()))
    return y
'''
    result = harness.evaluate_source(source, "softmax", dtypes=[F32], executor=pool, timeout_s=8)  # start-up ~4 s
    assert not result.accepted
    assert result.check == "worker:timeout", result.reason


def test_a_result_beating_the_roofline_twice_is_rejected(pool, monkeypatch):
    monkeypatch.setattr(roofline, "implausible", lambda time_us, floor, **kw: True)
    result = harness.evaluate_source(seeds(SPECS["softmax"])[0].read_text(), "softmax", dtypes=[F32],
                                     timing_shapes=[(4, 64)], executor=pool)
    assert not result.accepted and result.check == "roofline"
    assert "faster than the roofline floor twice" in result.reason
    assert ScoreTable().records(cpu_device(), "softmax") == []


def test_cli_evaluate_exit_codes_and_json(kforge_home):
    def run(path, op):
        return subprocess.run([sys.executable, "-m", "kforge", "evaluate", str(path), "--op", op, "--dtype", "fp32",
                               "--shape", "4x64", "--json"], capture_output=True, text=True, timeout=300)

    good = run(seeds(SPECS["rms_norm"])[0], "rms_norm")
    assert good.returncode == 0, good.stderr
    payload = json.loads(good.stdout)
    assert payload["verdict"] == "accepted" and payload["reason"] == "" and payload["records_written"] == 2
    bad = run(TESTS / "adversarial" / "edits_input.py", "rms_norm")
    assert bad.returncode == 1, bad.stderr
    payload = json.loads(bad.stdout)
    assert payload["verdict"] == "rejected" and payload["check"] == "modified-input" and payload["reason"]


@pytest.mark.parametrize("body, check, types", [
    ("def forward(x):\n    rows = x.shape[0] // 0\n    return torch.empty_like(x)\n", "raised",
     ["builtins.ZeroDivisionError"]),
    ("ROWS = 1 // 0\n\n\ndef forward(x):\n    return torch.empty_like(x)\n", "worker:error",
     ["kforge.candidate.CandidateImportError", "builtins.ZeroDivisionError"]),
])
def test_a_rejection_for_an_exception_carries_its_type_and_causes(body, check, types, pool):
    """What the prompt's feedback branches on (kforge.gen.prompt), not the message's text."""
    result = harness.evaluate_source(f"import torch\n\n\n{body}", "softmax", dtypes=[F32], executor=pool)
    assert not result.accepted and result.check == check, result.reason
    assert list(result.error_types[:len(types)]) == types
