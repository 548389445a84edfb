"""gemv's own cases; the generic tests (test_ops, test_bad_input, test_autograd,
test_catalog_provider) cover what every op shares.

- the reference against exact per-output sums (math.fsum), rounded once, special values included;
- the error budget: honest summation orders (sequential, per-lane then a tree, split-k) pass at
  Llama's k, the classic bugs (fp16 accumulation, TF32 products, a dropped block of k) do not;
- the shape convention: a shape is x's shape then n; problem, input_shape, fake, bytes;
- a bad weight (dtype, rank, length, device) refused naming 'weight', through both entry points.
The vendor within the budget, the seeds through the router, the harness and their forced paths
(partial row tiles of tl.dot, many k steps, uneven split chunks) are the grids' (test_ops, test_seeds).
"""
from __future__ import annotations

import math

import pytest
import torch


import kforge
from kforge.candidate import load_candidate
from kforge.catalog import seeds
from kforge.errors import KforgeInputError
from kforge.specs.gemv import SPEC, fake, make_inputs, problem, reference
from kforge.testing import assert_matches_reference, compare

DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
CPU_SETS = ("smoke", "odd", "edge")
ENTRIES = ("eager", "torch_ops")


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def entry_point(entry: str):
    return kforge.ops.gemv if entry == "eager" else torch.ops.kforge.gemv


def fsum_gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Every output as math.fsum of its k products (each exact in fp64 for inputs of fp32 or
    less): the correctly rounded fp64 value of the exact dot product."""
    rows = x.double().reshape(math.prod(x.shape[:-1]), x.shape[-1]).tolist()
    w = weight.double().tolist()
    out = [[math.fsum(a * b for a, b in zip(row, col)) for col in w] for row in rows]
    return torch.tensor(out, dtype=torch.float64).reshape(*x.shape[:-1], weight.shape[0])


# -- the reference -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_reference_is_the_exact_dot_product_rounded_once(dtype):
    for shape in ((3, 700, 20), (2, 3, 33, 5), (4, 0, 6), (50, 1)):
        x, weight = make_inputs(shape, dtype, "cpu", 1)
        exact = fsum_gemv(x, weight)
        got = reference(x, weight)
        assert got.dtype == dtype and got.shape == exact.shape
        # Half a unit of the output's dtype, plus the fp32 (fp64) accumulation's error, bounded by
        # k units of its resolution on the sum of |products|.
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        k = x.shape[-1]
        products = (x.double().abs() @ weight.double().abs().T)
        bound = 0.5 * torch.finfo(dtype).eps * exact.abs() + k * torch.finfo(acc).eps * products
        err = (got.double() - exact).abs()
        assert (err <= bound + torch.finfo(dtype).tiny).all(), f"{shape}: worst {float((err / bound).max()):.3g}"
    assert (reference(*make_inputs((4, 0, 6), dtype, "cpu", 0)) == 0).all()  # k = 0: empty sums


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, in the interpreter, on inf * 0
def test_special_values_reach_the_outputs_they_feed():
    x, weight = make_inputs((3, 40, 6), torch.float32, "cpu", 0)
    x[0, 5] = float("nan")  # all of row 0
    weight[2, 7] = float("inf")  # output 2: +-inf in row 1, NaN in row 2 (inf * 0)
    x[2, 7] = 0.0
    want = reference(x, weight)
    assert want[0].isnan().all()
    assert want[1, 2] == float("inf") * math.copysign(1.0, float(x[1, 7]))
    assert want[2, 2].isnan() and torch.isfinite(want[1:, [0, 1, 3, 4, 5]]).all()
    for path in seeds(SPEC):  # the kernels agree with it, NaN for NaN and inf for inf
        candidate = load_candidate(path, f"gemv_special_{path.stem}", SPEC)
        assert_matches_reference(SPEC, (x, weight), candidate.forward(x, weight))


# -- the error budget --------------------------------------------------------------------------------
def _sequential(x, weight, acc):
    """k products added one at a time in `acc`, as one thread looping over k does."""
    xs, ws = x.to(acc), weight.to(acc)
    y = torch.zeros(x.shape[0], weight.shape[0], dtype=acc)
    for i in range(x.shape[1]):
        y += xs[:, i:i + 1] * ws[:, i][None, :]
    return y


def _lanes_then_tree(x, weight, acc, lanes=256):
    """Each of `lanes` lanes sums every lanes-th product, then a pairwise tree: the register
    path of the seeds."""
    (m, k), n = x.shape, weight.shape[0]
    padded = -(-k // lanes) * lanes
    xs = torch.zeros(m, padded, dtype=acc)
    xs[:, :k] = x
    ws = torch.zeros(n, padded, dtype=acc)
    ws[:, :k] = weight
    part = torch.zeros(m, n, lanes, dtype=acc)
    for s in range(0, padded, lanes):
        part += xs[:, None, s:s + lanes] * ws[None, :, s:s + lanes]
    while part.shape[-1] > 1:
        part = part[..., 0::2] + part[..., 1::2]
    return part[..., 0]


def _split(x, weight, acc, splits=8):
    chunk = -(-x.shape[1] // splits)
    y = None
    for s in range(0, x.shape[1], chunk):
        part = x[:, s:s + chunk].to(acc) @ weight[:, s:s + chunk].to(acc).T
        y = part if y is None else y + part
    return y


def _tf32(t):
    bits = t.float().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)  # fp32 rounded to TF32's 10-bit mantissa


def test_the_budget_passes_honest_orders_and_catches_the_classic_bugs():
    k = 8192
    worst = {}
    for dtype in DTYPES:
        x, weight = make_inputs((4, k, 64), dtype, "cpu", 0)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        honest = {"sequential": _sequential(x, weight, acc), "lanes": _lanes_then_tree(x, weight, acc),
                  "split": _split(x, weight, acc)}
        for name, out in honest.items():
            result = compare(SPEC, (x, weight), out.to(dtype))
            assert result.ok, f"{dtype_id(dtype)} {name}: {result.message}"
            worst[dtype_id(dtype), name] = result.worst_ratio
    # Measured: fp64 in another order 0.22 of the budget at most, fp32 0.04; half types 0.12 (their
    # rounding). TF32 products err 11x the budget, fp16 accumulation 7.5x, a skipped block 15x (bf16).
    assert max(v for (d, _), v in worst.items() if d == "float64") < 0.5, worst
    assert max(v for (d, _), v in worst.items() if d == "float32") < 0.2, worst
    x, weight = make_inputs((4, k, 64), torch.float32, "cpu", 0)
    assert not compare(SPEC, (x, weight), _tf32(x) @ _tf32(weight).T).ok  # exact fp32 inputs rounded to TF32
    x, weight = make_inputs((4, k, 64), torch.float16, "cpu", 0)
    assert not compare(SPEC, (x, weight), _sequential(x, weight, torch.float16)).ok  # fp16 accumulation
    for dtype in (torch.bfloat16, torch.float32):
        x, weight = make_inputs((4, k, 64), dtype, "cpu", 0)
        skipped = (x[:, 128:].float() @ weight[:, 128:].float().T).to(dtype)  # one 128-wide block of k
        assert not compare(SPEC, (x, weight), skipped).ok, dtype


# -- shapes and sizes --------------------------------------------------------------------------------
def test_a_shape_is_xs_shape_then_the_output_features():
    x, weight = make_inputs((2, 3, 5, 7), torch.bfloat16, "cpu", 0)
    assert x.shape == (2, 3, 5) and weight.shape == (7, 5)
    assert problem((x, weight)) == (6, 7, 5)
    assert SPEC.shape_for((6, 7, 5)) == (6, 5, 7)
    assert problem(make_inputs(SPEC.shape_for((6, 7, 5)), torch.float32, "cpu", 0)) == (6, 7, 5)
    assert fake(x.to("meta"), weight.to("meta")).shape == (2, 3, 7)
    x1, w1 = make_inputs((64, 8), torch.float32, "cpu", 0)  # x of rank 1: y of shape (n,)
    assert kforge.ops.gemv(x1, w1).shape == (8,) and problem((x1, w1)) == (1, 8, 64)
    # Realistic scale: x ~ N(0, 1), weight ~ N(0, 1/k), so outputs are O(1) at Llama's k.
    x, weight = make_inputs((8, 4096, 256), torch.float32, "cpu", 0)
    assert 0.9 < float(reference(x, weight).std()) < 1.1
    # Every listed shape is a valid call; the GPU sets on meta (an lm head is 525M weights).
    for shape in SPEC.shapes():
        args = (torch.empty(shape[:-1], device="meta"), torch.empty(shape[-1], shape[-2], device="meta"))
        SPEC.check(args)
        assert problem(args) == (math.prod(shape[:-2]), shape[-1], shape[-2])
    assert all(problem_m <= 64 for problem_m in (math.prod(s[:-2]) for s in SPEC.shapes("decode", "prefill")))
    # Llama 3 8B's down projection at one token: the bf16 weight dominates the bytes.
    assert SPEC.bytes_moved((1, 4096, 14336), torch.bfloat16) == 2 * (4096 * 14336 + 14336 + 4096)
    assert SPEC.flops((32, 4096, 14336), torch.bfloat16) == 2 * 32 * 4096 * 14336


# -- bad calls ---------------------------------------------------------------------------------------
BAD_WEIGHTS = {
    "mixed_dtype": (lambda w: w.to(torch.bfloat16), r"has dtype torch.bfloat16 but 'x' has torch.float32"),
    "int_weight": (lambda w: w.to(torch.int64), r"has dtype torch.int64"),
    "vector": (lambda w: w[0], r"must have shape \(n, 64\)"),
    "3d": (lambda w: w[None], r"must have shape \(n, 64\)"),
    "short_k": (lambda w: w[:, :-1], r"must have shape \(n, 64\) to match the last dim of 'x', got \(32, 63\)"),
    "transposed": (lambda w: w.T, r"got \(64, 32\)"),
    "on_meta": (lambda w: w.to("meta"), r"is on meta but 'x' is on cpu"),
    "list": (lambda w: w.tolist(), r"must be a torch.Tensor"),
}


# A list through torch.ops: the dispatcher's schema parsing refuses it before kforge sees it.
BAD_CALLS = [(what, entry) for what in BAD_WEIGHTS for entry in ENTRIES if (what, entry) != ("list", "torch_ops")]


@pytest.mark.parametrize("what, entry", BAD_CALLS, ids=[f"{w}-{e}" for w, e in BAD_CALLS])
def test_a_bad_weight_is_refused_naming_weight(what, entry):
    make, message = BAD_WEIGHTS[what]
    x, weight = make_inputs((4, 64, 32), torch.float32, "cpu", 0)
    with pytest.raises(KforgeInputError, match=message) as info:
        entry_point(entry)(x, make(weight))
    assert (info.value.op, info.value.arg) == ("gemv", "weight"), str(info.value)
    assert_matches_reference(SPEC, (x, weight), entry_point(entry)(x, weight))  # the next valid call
