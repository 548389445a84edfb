"""layer_norm(x, weight, bias, eps=1e-5) -> y: y = (x - mean) / sqrt(var + eps) * weight + bias,
mean and biased variance over the last dim, as F.layer_norm.

x: (..., hidden) in bf16/fp16/fp32/fp64; weight, bias: (hidden,), any floating dtype; y: like x.
Computed in fp32 (fp64 for fp64 input), the variance from the centred row, rounded once.
"""
from __future__ import annotations

import torch

from kforge.specs import checks
from kforge.specs.rms_norm import DTYPES, NORM_EPS, NORM_MAGNITUDES, NORM_SHAPES, accumulate_dtype, norm_bytes
from kforge.specs.spec import OpSpec, generator, prod, randn, resolution_floor

NAME = "layer_norm"


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    acc = accumulate_dtype(x.dtype)
    xf = x.to(acc)
    centred = xf - xf.mean(-1, keepdim=True)
    var = centred.pow(2).mean(-1, keepdim=True)  # biased, as F.layer_norm
    y = centred * torch.rsqrt(var + eps) * weight.to(acc) + bias.to(acc)
    return y.to(x.dtype)


def vendor(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    # ATen takes weight and bias of x's dtype, or fp32 ones for half x; any other pair (fp32 x with
    # bf16 weight, fp16 x with bf16 weight) is refused, so those go up to the reference's
    # accumulation dtype: exact, except fp64 parameters of half x, which the reference rounds too.
    if weight.dtype != x.dtype or bias.dtype != x.dtype:
        acc = accumulate_dtype(x.dtype)
        weight, bias = weight.to(acc), bias.to(acc)
    # torch.layer_norm is F.layer_norm without its Python wrapper.
    return torch.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def fake(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return x.new_empty(x.shape)


def make_inputs(shape, dtype, device, seed):
    gen = generator(seed, device)
    # A residual stream does not average zero: the shift makes a kernel that skips the mean fail.
    x = randn(shape, dtype, device, gen, shift=0.5)
    weight = randn((shape[-1],), dtype, device, gen, scale=0.2, shift=1.0)  # (hidden,)
    bias = randn((shape[-1],), dtype, device, gen, scale=0.1)  # (hidden,)
    return (x, weight, bias, 1e-5)


def check(args) -> None:
    x, weight, bias, eps = args
    checks.floating_tensor(NAME, "x", x, DTYPES)
    checks.min_rank(NAME, "x", x, 1)
    for name, param in (("weight", weight), ("bias", bias)):
        checks.floating_tensor(NAME, name, param, DTYPES)
        checks.same_device(NAME, "x", x, name, param)
        checks.vector_of(NAME, name, param, x.shape[-1], "x")
    checks.epsilon(NAME, "eps", eps)


def problem(args):
    x = args[0]
    return (prod(x.shape[:-1]), x.shape[-1])  # (rows, hidden)


def layer_norm_bytes(problem, dtype) -> int:
    """x read and y written once, plus the weight and bias vectors."""
    return norm_bytes(problem, dtype) + problem[1] * (torch.finfo(dtype).bits // 8)


SPEC = OpSpec(
    name=NAME,
    schema="layer_norm(Tensor x, Tensor weight, Tensor bias, float eps=1e-05) -> Tensor",
    description="LayerNorm over the last dim: (x - mean) / sqrt(var + eps) * weight + bias",
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
    # mean (1), centre (1), square and sum (2), scale by rstd (1), weight (1), bias (1) per element
    flops=lambda problem, dtype: 7 * problem[0] * problem[1],
    bytes_moved=layer_norm_bytes,
    shape_sets=NORM_SHAPES,
    magnitudes=NORM_MAGNITUDES,
    scalar_variants=NORM_EPS,
    seed_kernels=("layer_norm_rowwise.py", "layer_norm_looped.py"),
)
