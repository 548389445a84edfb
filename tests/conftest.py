"""Shared fixtures. Every test runs with its own KFORGE_HOME, without the bundled table, and with
fresh routing state."""
from __future__ import annotations

import os

import torch

# Without a usable CUDA GPU, Triton runs kernels on CPU tensors only in its interpreter, and reads
# this when triton is first imported (importing torch._inductor imports it): set it before that.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from kforge.backends import BACKENDS, BackendName  # noqa: E402
from kforge.evaluate import isolation  # noqa: E402
from kforge.router import dispatch  # noqa: E402

# Spare workers (kforge.evaluate.spares) preload torch in a second process beside every task: on a
# 2-core runner that doubles the CPU a test's workers take. Off for the suite; tests/test_spares.py
# turns them on where it tests them.
os.environ.setdefault("KFORGE_WARM_WORKERS", "0")

pytest_plugins = ["github_fake"]  # its `github_fake` fixture, for the tests that talk to a fake GitHub

# Where bwrap cannot run (a CI runner without it), the suite's own test candidates still run, in
# plain workers; tests/test_isolation.py's bwrap tests skip, and its refusal test unsets this.
if isolation.probe().level is not isolation.Level.BWRAP:
    os.environ.setdefault(isolation.UNSAFE_ENV, "1")


@pytest.fixture(autouse=True)
def kforge_home(tmp_path, monkeypatch):
    """KFORGE_HOME in a temp dir, KFORGE_TABLE/KFORGE_PIN unset, routing state reset before and
    after (the reset after flushes the test's miss counts into its own home, not the user's)."""
    home = tmp_path / "kforge-home"
    monkeypatch.setenv("KFORGE_HOME", str(home))
    # The measurements shipped with kforge (kforge/tables/) stay out of tests' tables; the tests of
    # the shipped table read it by path.
    monkeypatch.setenv("KFORGE_BUNDLED_TABLE", "none")
    monkeypatch.delenv("KFORGE_TABLE", raising=False)
    monkeypatch.delenv("KFORGE_PIN", raising=False)
    dispatch.reset()
    yield home
    dispatch.reset()


@pytest.fixture
def fake_triton(monkeypatch, kforge_home):
    """A `helpers.FakeTritonBackend` in the TRITON slot: records naming "triton:test-ok",
    "triton:test-wrong", "triton:test-raise" route to CPU functions. Returns the backend, whose
    `calls` counter says which implementation served."""
    from helpers import FakeTritonBackend

    backend = FakeTritonBackend()
    monkeypatch.setitem(BACKENDS, BackendName.TRITON, backend)
    dispatch.reset()
    return backend


def pytest_xdist_auto_num_workers(config):
    """`-n auto` on a GPU host: at most 4 workers. Each worker is a CUDA process, and test_cuda's
    prefill shapes in 16 of them at once ran one H200 out of memory (15 failures, 2026-12-03)."""
    cores = len(os.sched_getaffinity(0))
    return min(cores, 4) if torch.cuda.is_available() else cores


@pytest.fixture
def steady_calibrate(monkeypatch):
    """Vendor's calibration as one fixed record per key: the tests using it are about candidates, the
    budget or a command's plumbing, and a real timing on a loaded 2-core runner is now and then
    refused as a stall (by design: `evaluate.plausible`), which left a key unrecorded in a fresh
    clone's run."""
    from helpers import make_record
    from kforge.evaluate import calibrate as calibrate_module

    def calibrate(spec, shape, dtype, device, **kwargs):
        problem = tuple(spec.problem(spec.make_inputs(tuple(shape), dtype, "cpu", 0)))
        return [make_record(spec.name, problem, impl="vendor", dtype=dtype)]

    monkeypatch.setattr(calibrate_module, "calibrate", calibrate)
