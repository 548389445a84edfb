"""silu_and_mul(x) -> y = silu(x[..., :d]) * x[..., d:]: the SwiGLU gate of Llama, Qwen and
Mixtral MLPs (vLLM's `silu_and_mul`), where x is the fused gate/up projection's output.

x: (..., 2d) in bf16/fp16/fp32/fp64, its last dim even; y: (..., d) in x's dtype.
Computed in fp32 (fp64 for fp64 input) and rounded once, as vLLM's kernel does.

The op's *shape* (what `make_inputs` takes and the shape sets list) is y's shape (..., d), not
x's: every size is then a valid call (the secret shapes of the evaluator perturb the last dim to
odd values), and the problem (rows, d) is the shape itself. The baselines' "4096x28672" (x's
shape, Llama 3 8B) is the shape (4096, 14336) here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kforge.errors import KforgeInputError
from kforge.specs import checks
from kforge.specs.spec import FLOAT_DTYPES, Magnitude, OpSpec, generator, prod, randn, resolution_floor

NAME = "silu_and_mul"
DTYPES = FLOAT_DTYPES + (torch.float64,)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    xf = x.to(accumulate_dtype(x.dtype))
    return (F.silu(xf[..., :d]) * xf[..., d:]).to(x.dtype)


def vendor(x: torch.Tensor) -> torch.Tensor:
    # Two roundings at x's dtype (silu, then the product); measured within the error budget on
    # every CPU shape and dtype (tests/test_op_silu_and_mul.py), so no upcast is needed.
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def fake(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


def make_inputs(shape, dtype, device, seed):
    """x of shape (..., 2d) for the output shape `shape` = (..., d), N(0, 1) like the gate and up
    projections of a trained MLP (silu's curved region is where its error shows)."""
    *lead, d = shape
    return (randn((*lead, 2 * d), dtype, device, generator(seed, device)),)


def check(args) -> None:
    (x,) = args
    checks.floating_tensor(NAME, "x", x, DTYPES)
    checks.min_rank(NAME, "x", x, 1)
    if x.shape[-1] % 2:
        raise KforgeInputError(NAME, "x", f"must have an even last dim (gate and up halves), got shape {tuple(x.shape)}")


def problem(args):
    x = args[0]
    return (prod(x.shape[:-1]), x.shape[-1] // 2)  # (rows, d)


def bytes_moved(problem, dtype) -> int:
    """Each row reads 2d elements and writes d."""
    rows, d = problem
    return 3 * rows * d * (torch.finfo(dtype).bits // 8)


SPEC = OpSpec(
    name=NAME,
    schema="silu_and_mul(Tensor x) -> Tensor",
    description="SwiGLU gate: silu(x[..., :d]) * x[..., d:] for x of last dim 2d",
    reference=reference,
    vendor=vendor,
    fake=fake,
    make_inputs=make_inputs,
    check=check,
    problem=problem,
    problem_dims=("rows", "d"),
    # Elementwise: a kernel's code does not depend on d (only Triton's automatic specialisation
    # on d % 16 == 0, which recompiles, never changes results), and its speed follows the element
    # count, which the nearest-shape rule's 4x band on both dims bounds. So a record measured at
    # Llama's d = 14336 may serve a small model's 4864 instead of a miss, and Qwen 2.5's 18944
    # where its evidence verified a problem at least that large (never beyond: `router.key`).
    exact_dims=(),
    dtypes=DTYPES,
    # No reduction: each output is one silu and one product of two inputs.
    tolerance=lambda dtype, problem: resolution_floor(dtype, 1),
    bytes_moved=bytes_moved,
    # silu as x / (1 + exp(-x)): exp, add, divide, then the product.
    flops=lambda problem, dtype: 4 * problem[0] * problem[1],
    shape_sets={
        # Shapes are y's, (..., d); x is (..., 2d).
        "smoke": ((4, 64), (2, 3, 40)),
        # Odd d puts the up half at an odd element offset (unaligned vector loads).
        "odd": ((3, 1000), (5, 4097), (1, 17), (7, 151), (2, 3, 65)),
        "edge": ((0, 64), (1, 1), (64, 1), (1, 8), (4, 0)),
        # d = intermediate size: Llama 3 8B / Mixtral 14336, Qwen 2.5 7B 18944, Llama 3 70B 28672.
        "decode": ((1, 14336), (32, 14336), (64, 18944), (8, 28672)),
        "prefill": ((4096, 14336), (8192, 14336), (4096, 18944), (2048, 28672)),
    },
    # Outputs are quadratic in x: 2^-5 keeps fp16 outputs normal (no subnormal flushing), 2^5 keeps
    # products of 5-sigma values (160^2) inside fp16's 65504.
    magnitudes=(Magnitude(2.0 ** -5, ("x",), output=2.0 ** -10), Magnitude(2.0 ** 5, ("x",), output=2.0 ** 10)),
    seed_kernels=("silu_and_mul_tiled.py", "silu_and_mul_persistent.py"),
)
