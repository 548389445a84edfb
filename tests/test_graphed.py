"""`kforge.graphed` (issue 18): a decode step of kforge ops captured into a CUDA graph, replayed on
new inputs with the same values as eager calls, and refusing what it was not captured for. The
capture tests need a GPU; the refusals of bad input run everywhere."""
from __future__ import annotations

import pytest
import torch

import kforge
from kforge.errors import KforgeInputError
from kforge.testing import assert_matches_reference

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def decode_step(x, residual, norm_w, gate_up, down, eps):
    h, residual = kforge.ops.fused_add_rms_norm(x, residual, norm_w, eps)
    up = kforge.ops.gemv(h, gate_up)
    act = kforge.ops.silu_and_mul(up)
    return kforge.ops.gemv(act, down), residual, kforge.ops.softmax(up)


def step_inputs(seed: int, tokens: int = 4, hidden: int = 256, inter: int = 512, device: str = "cuda"):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device, torch.bfloat16)

    return (r(tokens, hidden), r(tokens, hidden), r(hidden), r(2 * inter, hidden, scale=hidden ** -0.5),
            r(hidden, inter, scale=inter ** -0.5), 1e-6)


def test_graphed_refuses_inputs_off_the_gpu():
    with pytest.raises(KforgeInputError, match="kforge.graphed: argument 'example_inputs' must all be on one CUDA"):
        kforge.graphed(decode_step, *step_inputs(0, device="cpu"))
    with pytest.raises(KforgeInputError, match="argument 'fn' must be callable"):
        kforge.graphed(None, torch.zeros(1))
    with pytest.raises(KforgeInputError, match="must hold at least one tensor"):
        kforge.graphed(decode_step, 1.0)


@cuda
def test_a_graphed_decode_step_matches_eager_calls_on_new_inputs():
    step = kforge.graphed(decode_step, *step_inputs(0))
    for seed in (1, 2):
        args = step_inputs(seed)
        got = [t.clone() for t in step(*args)]
        want = decode_step(*args)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
        h, _ = kforge.ops.fused_add_rms_norm(args[0], args[1], args[2], args[5])
        assert_matches_reference(kforge.ops.SPECS["gemv"], (h, args[3]), kforge.ops.gemv(h, args[3]))


@cuda
def test_a_graphed_step_refuses_what_it_was_not_captured_for():
    args = step_inputs(0)
    step = kforge.graphed(decode_step, *args)
    with pytest.raises(KforgeInputError, match=r"args\[0\]' must have the captured shape \(4, 256\)"):
        step(*step_inputs(1, tokens=5))
    with pytest.raises(KforgeInputError, match=r"args\[5\]' was captured as 1e-06"):
        step(*args[:5], 1e-5)
    with pytest.raises(KforgeInputError, match=r"args\[1\]' must have the captured shape"):
        step(args[0], args[1].float(), *args[2:])
    with pytest.raises(KforgeInputError, match="takes the 6 arguments"):
        step(*args[:5])
