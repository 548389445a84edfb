"""layer_norm's own cases; the generic tests (test_ops, test_bad_input, test_autograd,
test_catalog_provider, test_triton_backend) cover what every op shares.

- the reference against a hand-written per-row loop in Python floats (math.fsum), rounded once,
  rows of large mean included; special values (NaN, Inf, constant rows, eps = 0), seeds agreeing;
- the default eps is F.layer_norm's 1e-5;
- the vendor on the mixed (x, weight, bias) dtypes ATen refuses, which it casts;
- problem, fake and bytes; a bad bias refused naming 'bias', through both entry points;
- both seeds on mixed dtypes and on rows whose mean dwarfs their spread; the fp64 eps.
The vendor within the budget, the seeds through the router (every dtype), the harness and the
looped seed's uneven lane counts are the grids' (test_ops, test_seeds).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F


import kforge
from kforge.candidate import load_candidate
from kforge.catalog import seeds
from kforge.errors import KforgeInputError
from kforge.specs.layer_norm import SPEC, fake, make_inputs, problem, reference
from kforge.testing import assert_matches_reference, compare

DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
CPU_SETS = ("smoke", "odd", "edge")
ENTRIES = ("eager", "torch_ops")


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def entry_point(entry: str):
    return kforge.ops.layer_norm if entry == "eager" else torch.ops.kforge.layer_norm


def layer_norm_loop(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float):
    """Per row in Python floats: the mean and the biased variance of the centred row with
    math.fsum (correctly rounded sums), then (v - mean) / sqrt(var + eps) * w + b. Returns it in
    fp64, and the size of the terms it sums, (|v| + |mean|) * rstd * |w| + |b|, which may cancel."""
    hidden = x.shape[-1]
    w, b = weight.double().tolist(), bias.double().tolist()
    out, terms = [], []
    for row in x.double().reshape(-1, hidden).tolist():
        mean = math.fsum(row) / hidden
        var = math.fsum((v - mean) ** 2 for v in row) / hidden
        rstd = 1.0 / math.sqrt(var + eps)
        out.append([(v - mean) * rstd * wi + bi for v, wi, bi in zip(row, w, b)])
        terms.append([(abs(v) + abs(mean)) * rstd * abs(wi) + abs(bi) for v, wi, bi in zip(row, w, b)])
    return (torch.tensor(out, dtype=torch.float64).reshape(x.shape),
            torch.tensor(terms, dtype=torch.float64).reshape(x.shape))


def candidate(path, name: str):
    return load_candidate(path, f"layer_norm_test_{name}", SPEC)


# -- the reference -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_reference_is_the_per_row_definition_rounded_once(dtype):
    x, weight, bias, eps = make_inputs((4, 3, 37), dtype, "cpu", 3)
    x = x.clone()
    x[1] = (x[1].double() * 0.01 + 300).to(dtype)  # mean 300, spread ~0.01: E[x^2] - mean^2 cancels
    exact, terms = layer_norm_loop(x, weight, bias, eps)  # (4, 3, 37)
    got = reference(x, weight, bias, eps)
    assert got.dtype == dtype and got.shape == (4, 3, 37)
    # One rounding (half a unit) of a computation in fp32 (fp64 for fp64) that errs a few units of
    # its own at the size of its terms: x and the mean (300 in row 1), and the bias.
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    bound = 0.5 * torch.finfo(dtype).eps * exact.abs() + 16 * torch.finfo(acc).eps * terms + torch.finfo(dtype).tiny
    err = (got.to(torch.float64) - exact).abs()
    assert (err <= bound).all(), f"worst {float((err / bound).max()):.3g} of the bound"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, in the interpreter, on inf - inf
def test_special_values_in_the_reference_and_the_seeds():
    x, weight, bias, _ = make_inputs((6, 40), torch.float32, "cpu", 0)
    x = x.clone()
    x[0, 5] = float("nan")
    x[1, 7] = float("inf")
    x[2, [3, 9]] = torch.tensor([float("inf"), -float("inf")])
    x[3] = 2.5  # constant: variance 0, the output is the bias
    got = reference(x, weight, bias, 1e-5)
    assert got[:3].isnan().all() and not got[3:].isnan().any()
    assert torch.equal(got[3], bias)
    # eps = 0 makes a constant row 0 * inf: NaN, as in F.layer_norm.
    zero_eps = reference(x, weight, bias, 0.0)
    assert zero_eps[3].isnan().all() and not zero_eps[4:].isnan().any()
    assert F.layer_norm(x[3:4], (40,), weight, bias, 0.0).isnan().all()
    for path in seeds(SPEC):
        forward = candidate(path, f"special_{path.stem}").forward
        for eps in (1e-5, 0.0):
            assert_matches_reference(SPEC, (x, weight, bias, eps), forward(x, weight, bias, eps))


def test_the_default_eps_is_f_layer_norms():
    x, weight, bias, _ = make_inputs((3, 64), torch.float32, "cpu", 1)
    x = x * 0.003  # variance ~1e-5: eps moves the output by a third
    want = F.layer_norm(x, (64,), weight, bias)
    assert not torch.allclose(want, F.layer_norm(x, (64,), weight, bias, 1e-6), rtol=1e-2)
    for entry in ENTRIES:
        torch.testing.assert_close(entry_point(entry)(x, weight, bias), want)
    torch.testing.assert_close(reference(x, weight, bias), want)


# -- the vendor --------------------------------------------------------------------------------------
# (x, weight, bias) dtypes: ATen on the CPU takes parameters of x's dtype, or fp32 ones for half x.
MIXED = [
    (torch.float32, torch.bfloat16, torch.bfloat16),
    (torch.bfloat16, torch.float16, torch.float16),
    (torch.float64, torch.float32, torch.float32),
    (torch.float16, torch.float64, torch.bfloat16),
    (torch.bfloat16, torch.float32, torch.bfloat16),
]
MIXED_IDS = ["-".join(dtype_id(d) for d in dtypes) for dtypes in MIXED]


def mixed_args(x_dtype, w_dtype, b_dtype, shape=(5, 100)):
    x, weight, bias, eps = make_inputs(shape, x_dtype, "cpu", 0)
    return (x, weight.to(w_dtype), bias.to(b_dtype), eps)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("dtypes", MIXED, ids=MIXED_IDS)
def test_mixed_dtypes_aten_refuses_are_served(dtypes, entry):
    args = mixed_args(*dtypes)
    if dtypes[1] == dtypes[2]:  # the cast is needed: ATen alone refuses the call
        with pytest.raises(RuntimeError, match="mixed dtype|same datatype"):
            torch.layer_norm(args[0], (100,), args[1], args[2], args[3])
    out = entry_point(entry)(*args)
    assert out.dtype == dtypes[0]
    assert_matches_reference(SPEC, args, out)


# -- shapes and sizes --------------------------------------------------------------------------------
def test_problem_fake_and_bytes():
    x, weight, bias, eps = make_inputs((2, 3, 5), torch.bfloat16, "cpu", 0)
    assert problem((x, weight, bias, eps)) == (6, 5)
    assert fake(x.to("meta"), weight, bias, eps).shape == (2, 3, 5)
    assert SPEC.shape_for((6, 5)) == (6, 5)
    # x read and y written once, plus weight and bias: 4096x4096 bf16.
    assert SPEC.bytes_moved((4096, 4096), torch.bfloat16) == 2 * (2 * 4096 * 4096 + 2 * 4096)
    assert SPEC.bytes_moved((8, 8192), torch.float32) == 4 * (2 * 8 * 8192 + 2 * 8192)


# -- bad calls ---------------------------------------------------------------------------------------
BAD_BIAS = {
    "int": lambda b: b.to(torch.int32),
    "short": lambda b: b[:-1],
    "2d": lambda b: b[None, :],
    "scalar": lambda b: b[0],
    "meta": lambda b: b.to("meta"),
    "list": lambda b: b.tolist(),
}


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("what", list(BAD_BIAS))
def test_a_bad_bias_is_refused_naming_bias(what, entry):
    x, weight, bias, eps = make_inputs((4, 64), torch.float32, "cpu", 0)
    bad = BAD_BIAS[what](bias)
    error = (KforgeInputError, RuntimeError) if what == "list" and entry == "torch_ops" else KforgeInputError
    with pytest.raises(error) as info:
        entry_point(entry)(x, weight, bad, eps)
    assert "bias" in str(info.value), str(info.value)
    if isinstance(info.value, KforgeInputError):
        assert (info.value.op, info.value.arg) == ("layer_norm", "bias")
    assert_matches_reference(SPEC, (x, weight, bias, eps), entry_point(entry)(x, weight, bias, eps))


# -- the catalog seeds -------------------------------------------------------------------------------
@pytest.mark.parametrize("path", seeds(SPEC), ids=lambda p: p.stem)
def test_the_seeds_on_mixed_dtypes_and_large_means(path):
    forward = candidate(path, f"mixed_{path.stem}").forward
    for dtypes in MIXED:
        args = mixed_args(*dtypes, shape=(3, 1000))
        assert_matches_reference(SPEC, args, forward(*args))
    # fp32 rows of mean 1000 and spread 0.1 (ratio 1e4): E[x^2] - mean^2 loses all of fp32's digits.
    x, weight, bias, eps = make_inputs((4, 5000), torch.float32, "cpu", 2)
    x = x * 0.1 + 1000
    out = forward(x, weight, bias, eps)
    assert_matches_reference(SPEC, (x, weight, bias, eps), out)


def test_the_eps_pair_puts_fp64_eps_back_together():
    """Compiled kernels take a Python float as fp32: the seeds pass fp64 eps as hi (an fp32 value)
    plus lo. Without lo, fp64 output would leave the budget."""
    module = candidate(seeds(SPEC)[0], "eps_pair").module
    for eps in (1e-5, 1e-6, 1e-12, 0.25, 0.0):
        hi, lo = module._eps_pair(eps, torch.float64)
        assert hi + lo == eps and torch.tensor(hi, dtype=torch.float32).item() == hi
    assert module._eps_pair(1e-5, torch.float32) == (1e-5, 0.0)
    args = make_inputs((4, 256), torch.float64, "cpu", 0)
    hi, _ = module._eps_pair(1e-5, torch.float64)
    assert not compare(SPEC, args, reference(*args[:3], hi)).ok
