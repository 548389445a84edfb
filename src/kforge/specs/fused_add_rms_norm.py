"""fused_add_rms_norm(x, residual, weight, eps=1e-6) -> (y, h), with h = x + residual and
y = rms_norm(h, weight, eps): the pre-norm residual step of Llama-style blocks.

x, residual: (..., hidden), same shape and dtype; weight: (hidden,); y and h: like x.
h is summed in fp32 (fp64 for fp64 input) and normalised before rounding, as vLLM's kernel does;
it is returned rounded to x's dtype. Functional: the inputs are never written.
"""
from __future__ import annotations

import torch

from kforge.specs import checks
from kforge.specs.rms_norm import DTYPES, NORM_EPS, NORM_SHAPES, accumulate_dtype, norm_bytes
from kforge.specs.spec import Magnitude, OpSpec, generator, prod, randn, resolution_floor

NAME = "fused_add_rms_norm"


def reference(x, residual, weight, eps: float = 1e-6):
    acc = accumulate_dtype(x.dtype)
    h = x.to(acc) + residual.to(acc)
    y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight.to(acc)
    return y.to(x.dtype), h.to(x.dtype)


def vendor(x, residual, weight, eps: float = 1e-6):
    h = x + residual
    if weight.dtype != h.dtype:  # as rms_norm's vendor
        acc = accumulate_dtype(h.dtype)
        return torch.rms_norm(h.to(acc), (h.shape[-1],), weight.to(acc), eps).to(h.dtype), h
    return torch.rms_norm(h, (h.shape[-1],), weight, eps), h


def fake(x, residual, weight, eps: float = 1e-6):
    return x.new_empty(x.shape), x.new_empty(x.shape)


def make_inputs(shape, dtype, device, seed):
    gen = generator(seed, device)
    x = randn(shape, dtype, device, gen)
    residual = randn(shape, dtype, device, gen)
    weight = randn((shape[-1],), dtype, device, gen, scale=0.2, shift=1.0)  # (hidden,)
    return (x, residual, weight, 1e-6)


def check(args) -> None:
    x, residual, weight, eps = args
    checks.floating_tensor(NAME, "x", x, DTYPES)
    checks.min_rank(NAME, "x", x, 1)
    checks.same_dtype(NAME, "x", x, "residual", residual)
    checks.same_device(NAME, "x", x, "residual", residual)
    checks.same_shape(NAME, "x", x, "residual", residual)
    checks.floating_tensor(NAME, "weight", weight, DTYPES)
    checks.same_device(NAME, "x", x, "weight", weight)
    checks.vector_of(NAME, "weight", weight, x.shape[-1], "x")
    checks.epsilon(NAME, "eps", eps)


def problem(args):
    x = args[0]
    return (prod(x.shape[:-1]), x.shape[-1])  # (rows, hidden)


SPEC = OpSpec(
    name=NAME,
    schema="fused_add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps=1e-06) -> (Tensor, Tensor)",
    description="residual add then RMSNorm: (rms_norm(x + residual), x + residual)",
    reference=reference,
    vendor=vendor,
    fake=fake,
    make_inputs=make_inputs,
    check=check,
    problem=problem,
    problem_dims=("rows", "hidden"),
    exact_dims=("hidden",),
    dtypes=DTYPES,
    tolerance=lambda dtype, problem: resolution_floor(dtype, problem[1]),
    bytes_moved=lambda problem, dtype: norm_bytes(problem, dtype, streams=4),
    flops=lambda problem, dtype: 5 * problem[0] * problem[1],
    shape_sets=NORM_SHAPES,
    num_outputs=2,
    # x and residual together (the sum h follows them; y is normalised, and h's budget is its own
    # rounding, which the reference measures, so the floor stays).
    magnitudes=(Magnitude(2.0 ** -10, ("x", "residual")), Magnitude(2.0 ** 7, ("x", "residual"))),
    scalar_variants=NORM_EPS,
    seed_kernels=("fused_add_rms_norm_rowwise.py",),
    knowledge_family="rms_norm",  # the same kernel with an add before it: rms_norm's learnings apply
)
