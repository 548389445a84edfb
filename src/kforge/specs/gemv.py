"""gemv(x, weight) -> y = x @ weight.T: a linear layer's matmul at decode, where x has few rows.

x: (..., k) in bf16/fp16/fp32/fp64; weight: (n, k) of x's dtype, stored as `F.linear` takes it
(row-major, each output feature's k weights contiguous); y: (..., n) in x's dtype. The m rows of
x (m = the product of its leading dims, 1..64 at decode) each take n dot products of length k,
accumulated in fp32 (fp64 for fp64 input) and rounded once. Memory-bound: the weight (n * k
elements) is read once and dominates the bytes; x and y are small.

The op's *shape* (what `make_inputs` takes and the shape sets list) is x's shape followed by n,
(..., k, n), so that one tuple builds both arguments; the problem is (m, n, k), and `input_shape`
maps it back to (m, k, n). n and k are exact dims: kernels specialise on the weight's size (block
sizes, split-k factors), while m may be served by the nearest measured row count (up to the
most rows its evidence verified).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kforge.errors import KforgeInputError
from kforge.specs import checks
from kforge.specs.spec import FLOAT_DTYPES, Magnitude, OpSpec, Tolerance, generator, prod, randn, resolution_floor

NAME = "gemv"
DTYPES = FLOAT_DTYPES + (torch.float64,)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    acc = accumulate_dtype(x.dtype)
    return (x.to(acc) @ weight.to(acc).T).to(x.dtype)


def vendor(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # cuBLAS (CPU: the BLAS) at x's dtype, accumulating in fp32 for half types.
    return F.linear(x, weight)


def fake(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def make_inputs(shape, dtype, device, seed):
    """x of shape (..., k) from `shape` = (..., k, n), N(0, 1) like a normed hidden state, and a
    weight (n, k) of N(0, 1/k) like a trained linear layer's, so outputs are O(1) at every k."""
    *lead, k, n = shape
    gen = generator(seed, device)
    x = randn((*lead, k), dtype, device, gen)
    weight = randn((n, k), dtype, device, gen, scale=1.0 / math.sqrt(max(k, 1)))  # (n, k)
    return (x, weight)


def check(args) -> None:
    x, weight = args
    checks.floating_tensor(NAME, "x", x, DTYPES)
    checks.min_rank(NAME, "x", x, 1)
    checks.floating_tensor(NAME, "weight", weight, DTYPES)
    checks.same_device(NAME, "x", x, "weight", weight)
    if weight.dtype != x.dtype:
        # F.linear refuses mixed dtypes too; a weight is cast once at load, not per call.
        raise KforgeInputError(NAME, "weight", f"has dtype {weight.dtype} but 'x' has {x.dtype}; cast one of them")
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise KforgeInputError(NAME, "weight", f"must have shape (n, {x.shape[-1]}) to match the last dim of 'x', "
                                               f"got {tuple(weight.shape)}")


def problem(args):
    x, weight = args
    return (prod(x.shape[:-1]), weight.shape[0], x.shape[-1])  # (m, n, k)


def input_shape(problem):
    m, n, k = problem
    return (m, k, n)


def tolerance(dtype, problem):
    """The resolution floor at O(1) outputs, plus 2 * eps * sqrt(k) of the accumulating dtype:
    summed in another order (sequential, per lane then a tree, split-k), a dot product of O(1)
    partial sums errs a random walk of k roundings. Measured on the CPU against fp64 (4 x 192
    outputs, k from 17 to 28672): other orders in fp64 reach 0.48 of this budget, a sequential
    fp32 sum 0.15, leaving room for the tail of a million outputs (the prefill set); fp32 inputs
    multiplied as TF32 err 14x (k = 28672) to 100x (k = 64) the budget, fp16 accumulation of
    fp16 inputs 1.2x to 21x. tests/test_op_gemv.py re-measures at k = 8192. Half-type outputs:
    their own rounding dominates."""
    k = problem[2]
    floor = resolution_floor(dtype, k)
    acc_eps = torch.finfo(accumulate_dtype(dtype)).eps
    return Tolerance(atol=floor.atol + 2.0 * acc_eps * math.sqrt(k), rtol=floor.rtol)


def bytes_moved(problem, dtype) -> int:
    """The weight and x read once, y written once."""
    m, n, k = problem
    return (n * k + m * k + m * n) * (torch.finfo(dtype).bits // 8)


SPEC = OpSpec(
    name=NAME,
    schema="gemv(Tensor x, Tensor weight) -> Tensor",
    description="skinny matmul y = x @ weight.T for x (..., k) of few rows and weight (n, k), as F.linear",
    reference=reference,
    vendor=vendor,
    fake=fake,
    make_inputs=make_inputs,
    check=check,
    problem=problem,
    problem_dims=("m", "n", "k"),
    exact_dims=("n", "k"),
    dtypes=DTYPES,
    tolerance=tolerance,
    bytes_moved=bytes_moved,
    flops=lambda problem, dtype: 2 * problem[0] * problem[1] * problem[2],
    shape_sets={
        # Shapes are (..., k, n): x's shape, then the output features.
        # Small: gradcheck perturbs every element of x and of the weight.
        "smoke": ((4, 16, 16), (2, 3, 20, 10)),
        # Odd k leaves a partial block of the reduction; odd n a partial block of outputs.
        "odd": ((3, 100, 17), (1, 1000, 33), (5, 17, 129), (2, 3, 65, 7), (7, 257, 24)),
        # k = 0: every output is an empty sum, 0. (64, 8): x of rank 1, y of shape (n,).
        "edge": ((0, 64, 32), (1, 1, 1), (64, 16, 1), (4, 0, 8), (3, 8, 0), (64, 8)),
        # (k, n) of Llama 3 8B (hidden 4096): qkv 6144, o_proj 4096, gate_up 28672, down 14336 -> 4096;
        # Llama 3 70B (hidden 8192): qkv 10240, down 28672 -> 8192; Qwen 2.5 7B (hidden 3584): qkv
        # 4608, down 18944 -> 3584; Llama 3 8B's lm head (vocabulary 128256).
        "decode": ((1, 4096, 6144), (1, 4096, 4096), (1, 4096, 28672), (1, 14336, 4096),
                   (4, 4096, 6144), (16, 4096, 4096), (32, 14336, 4096), (64, 4096, 6144),
                   (1, 8192, 10240), (1, 28672, 8192), (1, 3584, 4608), (8, 18944, 3584),
                   (1, 4096, 128256)),
        # gemv has no prefill; the name keeps the tools' two GPU sets: the biggest weights at 16..64 rows.
        "prefill": ((64, 4096, 28672), (64, 14336, 4096), (16, 8192, 10240), (32, 28672, 8192),
                    (64, 4096, 128256)),
    },
    input_shape=input_shape,
    # Outputs are linear in x.
    magnitudes=(Magnitude(2.0 ** -10, ("x",), output=2.0 ** -10), Magnitude(2.0 ** 7, ("x",), output=2.0 ** 7)),
    seed_kernels=("gemv_rowblock.py", "gemv_splitk.py"),
)
