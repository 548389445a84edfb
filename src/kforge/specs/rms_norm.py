"""rms_norm(x, weight, eps=1e-6) -> y: y = x / sqrt(mean(x^2, -1) + eps) * weight.

x: (..., hidden) in bf16/fp16/fp32/fp64; weight: (hidden,), any floating dtype; y: like x.
Statistics are accumulated in fp32 (fp64 for fp64 input), as Llama-style models do.
"""
from __future__ import annotations

import torch

from kforge.specs import checks
from kforge.specs.spec import FLOAT_DTYPES, Magnitude, OpSpec, generator, prod, randn, resolution_floor

NAME = "rms_norm"
DTYPES = FLOAT_DTYPES + (torch.float64,)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    acc = accumulate_dtype(x.dtype)
    xf = x.to(acc)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.to(acc)).to(x.dtype)


def vendor(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    if weight.dtype != x.dtype:
        # ATen's fused kernel takes one dtype; given two it warns (once per process, pointing at
        # this line) and runs its composite. The reference's own arithmetic instead: no warning.
        acc = accumulate_dtype(x.dtype)
        return torch.rms_norm(x.to(acc), (x.shape[-1],), weight.to(acc), eps).to(x.dtype)
    # torch.rms_norm is F.rms_norm without its Python wrapper (~0.3 us less per call).
    return torch.rms_norm(x, (x.shape[-1],), weight, eps)


def fake(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x.new_empty(x.shape)


def make_inputs(shape, dtype, device, seed):
    gen = generator(seed, device)
    x = randn(shape, dtype, device, gen)
    weight = randn((shape[-1],), dtype, device, gen, scale=0.2, shift=1.0)  # (hidden,)
    return (x, weight, 1e-6)


def check(args) -> None:
    x, weight, eps = args
    checks.floating_tensor(NAME, "x", x, DTYPES)
    checks.min_rank(NAME, "x", x, 1)
    checks.floating_tensor(NAME, "weight", weight, DTYPES)
    checks.same_device(NAME, "x", x, "weight", weight)
    checks.vector_of(NAME, "weight", weight, x.shape[-1], "x")
    checks.epsilon(NAME, "eps", eps)


def problem(args):
    x = args[0]
    hidden = x.shape[-1]
    return (prod(x.shape[:-1]), hidden)  # (rows, hidden)


def norm_bytes(problem, dtype, streams: int = 2) -> int:
    """`streams` row-sized tensors read or written, plus one weight vector."""
    rows, hidden = problem
    size = torch.finfo(dtype).bits // 8
    return size * (streams * rows * hidden + hidden)


# Magnitudes of x (the outputs are normalised: their floor stays): mean squares of ~1e-6, where eps
# decides the result, and ~1.6e4, where a reciprocal square root iterated from 1.0 diverges; at
# fp16, 2^7 * N(0, 1) stays far inside its range (65504). eps from an epsilon that only guards zero
# rows to one that dominates unit rows.
NORM_MAGNITUDES = (Magnitude(2.0 ** -10, ("x",)), Magnitude(2.0 ** 7, ("x",)))
NORM_EPS = {"eps": (1e-2, 0.5)}

NORM_SHAPES = {
    "smoke": ((4, 64), (2, 3, 128)),
    "odd": ((3, 1000), (5, 4097), (1, 17), (7, 4113), (2, 3, 65)),
    "edge": ((0, 64), (1, 1), (1, 8), (64, 1)),
    "decode": ((1, 4096), (8, 4096), (32, 4096), (64, 8192)),
    "prefill": ((4096, 4096), (4096, 5120), (16384, 8192)),
}

SPEC = OpSpec(
    name=NAME,
    schema="rms_norm(Tensor x, Tensor weight, float eps=1e-06) -> Tensor",
    description="RMSNorm over the last dim: x / sqrt(mean(x^2) + eps) * weight",
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
    bytes_moved=norm_bytes,
    flops=lambda problem, dtype: 4 * problem[0] * problem[1],
    shape_sets=NORM_SHAPES,
    magnitudes=NORM_MAGNITUDES,
    scalar_variants=NORM_EPS,
    seed_kernels=("rms_norm_rowwise.py",),
)
