"""The cached launcher (kforge.backends.launcher): after two calls of a signature, a stored kernel's
forward is replayed from its recorded launches. On CPU the plan replays through Triton's
interpreter, which checks the plan itself (roots, offsets, buffers, outputs); the C-launcher path is
exercised on the GPU (tests/test_cuda.py and benchmarks/triton_launch.py).

A replay must give forward's answer on every later call, and anything it could get wrong must
keep forward instead: buffers read before being written, work done outside the recorded
launches, inputs edited in place, autotune hooks."""
from __future__ import annotations

import dataclasses
import textwrap

import pytest
import torch

import kforge
from helpers import write_user_table
from kforge.backends.launcher import cached_launcher
from kforge.backends.triton import TritonBackend, impl_id
from kforge.candidate import load_module
from kforge.catalog import seeds
from kforge.ops import SPECS
from kforge.device import fingerprint
from kforge.router import dispatch
from kforge.store import KernelStore
from kforge.testing import assert_matches_reference

pytestmark = pytest.mark.skipif(
    TritonBackend().available() is not None, reason=f"Triton cannot run here: {TritonBackend().available()}")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SEED_FILES = [(op, path) for op, spec in SPECS.items() for path in seeds(spec)]
HEADER = "import torch\nimport triton\nimport triton.language as tl\n\n"


def module_from(tmp_path, name: str, body: str):
    path = tmp_path / f"{name}.py"
    path.write_text(HEADER + textwrap.dedent(body))
    return load_module(path, f"kforge_test_launcher_{name}_{abs(hash(str(tmp_path))) % 10**8}")


def calls(fn, make, n=4):
    """n calls of fn on fresh inputs; returns the (inputs, output) pairs."""
    out = []
    for i in range(n):
        args = make(i)
        out.append((args, fn(*args)))
    return out


@pytest.mark.parametrize("op, path", SEED_FILES, ids=[p.stem for _, p in SEED_FILES])
def test_every_seed_is_replayed_and_stays_correct(op, path):
    spec = kforge.ops.SPECS[op]
    cand = KernelStore().load(KernelStore().put(path.read_text(), op=op, provider="catalog").sha256, spec)
    # (3, 40) for the ops of two-dim shapes; an op of other shapes at its first smoke shape.
    shape = (3, 40) if len(spec.shape_sets["smoke"][0]) == 2 else spec.shape_sets["smoke"][0]
    make = lambda i: spec.make_inputs(shape, torch.float32, DEVICE, i)  # noqa: E731
    fn = cached_launcher(cand.forward, cand.module, make(0), spec.tensor_args)
    state = fn.launch_state
    for i, (args, out) in enumerate(calls(fn, make, 2)):
        assert_matches_reference(spec, args, out)
    assert state.mode == "replay", state.reason
    forward_calls = []
    state.forward = lambda *a: forward_calls.append(a)  # replay must not go back to forward
    for args, out in calls(fn, lambda i: make(10 + i), 3):
        assert_matches_reference(spec, args, out)
    assert forward_calls == []


def test_a_buffer_read_before_it_is_written_keeps_forward(tmp_path):
    module = module_from(tmp_path, "accumulate", """
        @triton.jit
        def _acc(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            m = offs < n
            y = tl.load(y_ptr + offs, mask=m, other=0.0)
            tl.store(y_ptr + offs, y + tl.load(x_ptr + offs, mask=m, other=0.0), mask=m)

        def forward(x):
            y = torch.zeros_like(x)  # the replay allocates with empty: it must not be used
            _acc[(1,)](x, y, x.numel(), BLOCK=triton.next_power_of_2(x.numel()))
            return y
    """)
    make = lambda i: (torch.randn(37, generator=torch.Generator().manual_seed(i)).to(DEVICE),)  # noqa: E731
    fn = cached_launcher(module.forward, module, make(0), (0,))
    for args, out in calls(fn, make, 4):
        torch.testing.assert_close(out, args[0])
    assert fn.launch_state.mode == "forward"
    assert "poisoned" in fn.launch_state.reason


def test_two_launches_a_workspace_and_an_output_view_of_a_larger_buffer(tmp_path):
    module = module_from(tmp_path, "two_launches", """
        @triton.jit
        def _row_sum(x_ptr, ws_ptr, cols, BLOCK: tl.constexpr):
            row = tl.program_id(0)
            offs = tl.arange(0, BLOCK)
            x = tl.load(x_ptr + row * cols + offs, mask=offs < cols, other=0.0)
            tl.store(ws_ptr + row, tl.sum(x, axis=0))

        @triton.jit
        def _scale(x_ptr, ws_ptr, y_ptr, cols, y_row_stride, BLOCK: tl.constexpr):
            row = tl.program_id(0)
            offs = tl.arange(0, BLOCK)
            x = tl.load(x_ptr + row * cols + offs, mask=offs < cols, other=0.0)
            tl.store(y_ptr + row * y_row_stride + offs, x / tl.load(ws_ptr + row), mask=offs < cols)

        def forward(x):
            rows, cols = x.shape
            block = triton.next_power_of_2(cols)
            ws = torch.empty(rows, dtype=torch.float32, device=x.device)
            big = torch.empty((rows, 2 * cols), dtype=x.dtype, device=x.device)
            y = big[:, cols:]
            _row_sum[(rows,)](x, ws, cols, BLOCK=block)
            _scale[(rows,)](x, ws, y, cols, 2 * cols, BLOCK=block)
            return y
    """)

    def make(i):
        return (torch.rand(5, 24, generator=torch.Generator().manual_seed(i)).add_(0.5).to(DEVICE),)

    fn = cached_launcher(module.forward, module, make(0), (0,))
    results = calls(fn, make, 5)
    state = fn.launch_state
    assert state.mode == "replay", state.reason
    assert len(state.plan.launches) == 2 and len(state.plan.buffers) == 2
    assert state.plan.outputs[0].offset == 24 * 4  # the output is a view 24 floats into its buffer
    for (x,), y in results:
        torch.testing.assert_close(y, x / x.sum(1, keepdim=True))
        assert y.stride() == (48, 1)


def test_a_forward_that_edits_its_input_keeps_forward(tmp_path):
    module = module_from(tmp_path, "edits_input", """
        @triton.jit
        def _double_and_bump(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            m = offs < n
            x = tl.load(x_ptr + offs, mask=m, other=0.0)
            tl.store(y_ptr + offs, 2 * x, mask=m)
            tl.store(x_ptr + offs, x + 1, mask=m)

        def forward(x):
            y = torch.empty_like(x)
            _double_and_bump[(1,)](x, y, x.numel(), BLOCK=triton.next_power_of_2(x.numel()))
            return y
    """)
    make = lambda i: (torch.zeros(16, device=DEVICE),)  # noqa: E731
    fn = cached_launcher(module.forward, module, make(0), (0,))
    for args, out in calls(fn, make, 3):
        torch.testing.assert_close(out, torch.zeros(16, device=DEVICE))
    assert fn.launch_state.mode == "forward"


def test_an_output_that_no_launch_wrote_keeps_forward(tmp_path):
    module = module_from(tmp_path, "returns_input", """
        @triton.jit
        def _noop(x_ptr, n, BLOCK: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)

        def forward(x):
            _noop[(1,)](x, x.numel(), BLOCK=triton.next_power_of_2(x.numel()))
            return x
    """)
    make = lambda i: (torch.ones(8, device=DEVICE),)  # noqa: E731
    fn = cached_launcher(module.forward, module, make(0), (0,))
    calls(fn, make, 3)
    assert fn.launch_state.mode == "forward"
    assert "not written by a recorded launch" in fn.launch_state.reason


def test_autotune_hooks_keep_forward(tmp_path):
    # Triton runs reset_to_zero only while benchmarking configs; any hook is refused all the same.
    module = module_from(tmp_path, "autotune_reset", """
        @triton.autotune(configs=[triton.Config({"BLOCK": 16})], key=["n"], reset_to_zero=["y_ptr"])
        @triton.jit
        def _acc(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            m = offs < n
            tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=m), mask=m)

        def forward(x):
            y = torch.empty_like(x)
            _acc[(1,)](x, y, x.numel())
            return y
    """)
    make = lambda i: (torch.full((16,), float(i), device=DEVICE),)  # noqa: E731
    fn = cached_launcher(module.forward, module, make(0), (0,))
    for (x,), y in calls(fn, make, 3):
        torch.testing.assert_close(y, x)
    assert fn.launch_state.mode == "forward"
    assert "autotune hooks" in fn.launch_state.reason


def test_non_contiguous_calls_and_the_switch_keep_forward(monkeypatch):
    spec = kforge.ops.SPECS["softmax"]
    path = seeds(SPECS["softmax"])[0]
    cand = KernelStore().load(KernelStore().put(path.read_text(), op="softmax", provider="catalog").sha256, spec)
    x = torch.randn(6, 8, device=DEVICE)
    assert cached_launcher(cand.forward, cand.module, (x.t(),), spec.tensor_args) is cand.forward
    monkeypatch.setenv("KFORGE_LAUNCHER", "jit")
    assert cached_launcher(cand.forward, cand.module, (x,), spec.tensor_args) is cand.forward


def test_the_router_replays_a_stored_kernel_per_decision():
    op = "rms_norm"
    spec = kforge.ops.SPECS[op]
    sha = KernelStore().put(seeds(SPECS[op])[0].read_text(), op=op, provider="catalog").sha256
    cand = KernelStore().load(sha, spec)
    from helpers import accept_kernel, make_record

    accept_kernel(sha, op)

    record = make_record(op, (8, 64), impl=impl_id(sha), p50=0.5, domain=cand.domain,
                         device=str(fingerprint(DEVICE)))
    write_user_table(dataclasses.replace(record, source_sha256=sha, provider="catalog"))
    dispatch.reset()
    for i in range(4):
        args = spec.make_inputs((8, 64), torch.float32, DEVICE, i)
        assert_matches_reference(spec, args, kforge.ops.rms_norm(*args))
    (decision,) = dispatch.ROUTER.ops[op].decisions.values()
    assert decision.impl == impl_id(sha) and decision.calls == 4
    assert decision.fn.launch_state.mode == "replay", decision.fn.launch_state.reason
