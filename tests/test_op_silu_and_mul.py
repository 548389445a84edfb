"""silu_and_mul's own cases; the generic tests (test_ops, test_bad_input, test_autograd,
test_catalog_provider, test_seeds) cover what every op shares.

- the reference against a hand-written fp64 SwiGLU, rounded once, special values included;
- the shape convention: an op shape is y's, (..., d), x is (..., 2d); problem, fake and bytes;
- an odd last dim refused naming 'x', through both entry points.
The vendor within the budget, the seeds through the router, the harness and their forced loop
paths are the grids' (test_ops, test_seeds).
"""
from __future__ import annotations

import pytest
import torch


import kforge
from kforge.catalog import seeds
from kforge.errors import KforgeInputError
from kforge.specs.silu_and_mul import SPEC, fake, make_inputs, problem, reference
from kforge.store import KernelStore
from kforge.testing import assert_matches_reference

DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
CPU_SETS = ("smoke", "odd", "edge")


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def swiglu_fp64(x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up by its definition, g / (1 + e^-g) * u, in fp64 (no torch silu)."""
    x = x.to(torch.float64)
    d = x.shape[-1] // 2
    gate, up = x[..., :d], x[..., d:]
    return gate / (1.0 + torch.exp(-gate)) * up


# -- the reference -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_reference_is_the_fp64_swiglu_rounded_once(dtype):
    (x,) = make_inputs((4, 3, 37), dtype, "cpu", 3)
    x = x * 4  # gates out to +-16: silu's tails as well as its bend
    exact = swiglu_fp64(x)  # (4, 3, 37)
    got = reference(x)
    assert got.dtype == dtype and got.shape == (4, 3, 37)
    # One rounding (half a unit) of a computation in fp32 (fp64 for fp64) that errs a few units of
    # its own; outputs under the smallest normal round to subnormals, whose spacing is absolute.
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    rel = 0.5 * torch.finfo(dtype).eps + 4 * torch.finfo(acc).eps
    bound = rel * exact.abs() + torch.finfo(dtype).tiny
    err = (got.to(torch.float64) - exact).abs()
    assert (err <= bound).all(), f"worst {float((err / bound).max()):.3g} of the bound"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, in the interpreter, on exp(inf), inf / inf, inf * 0
def test_reference_special_values():
    nan, inf = float("nan"), float("inf")
    gate = torch.tensor([-inf, inf, nan, 1.0, -100.0, inf, 0.0])
    up = torch.tensor([1.0, 2.0, 1.0, nan, 3.0, 0.0, 5.0])
    x = torch.cat([gate, up])[None, :]  # (1, 14)
    got = reference(x)[0]
    # silu(-inf) = -inf * 0; silu(inf) * 0 = inf * 0; a NaN in either half; a tail under fp32's range.
    assert got[[0, 2, 3, 5]].isnan().all()
    assert got[1] == inf and got[4] == 0 and got[4].signbit() and got[6] == 0
    for path in seeds(SPEC):  # the kernels agree with it, NaN for NaN
        candidate = KernelStore().load(KernelStore().put(path.read_text(), op=SPEC.name, provider="catalog").sha256, SPEC)
        assert_matches_reference(SPEC, (x,), candidate.forward(x))


# -- shapes and sizes --------------------------------------------------------------------------------
def test_an_op_shape_is_the_outputs_and_x_is_twice_as_wide():
    (x,) = make_inputs((2, 3, 5), torch.bfloat16, "cpu", 0)
    assert x.shape == (2, 3, 10)
    assert problem((x,)) == (6, 5)
    assert SPEC.shape_for((6, 5)) == (6, 5)
    assert fake(x.to("meta")).shape == (2, 3, 5)
    # Every listed shape is a valid call, odd d included (x's last dim is even by construction);
    # the GPU sets' x on meta (drawing prefill-sized data on the CPU takes seconds).
    for shape in SPEC.shapes():
        if shape in SPEC.shapes(*CPU_SETS):
            args = make_inputs(shape, torch.float32, "cpu", 0)
        else:
            args = (torch.empty((*shape[:-1], 2 * shape[-1]), device="meta"),)
        SPEC.check(args)
        assert problem(args) == (torch.Size(shape[:-1]).numel(), shape[-1])
    # The baselines' 4096x28672 (x of Llama 3 8B): 2d read and d written per row, in bf16.
    assert SPEC.bytes_moved((4096, 14336), torch.bfloat16) == 4096 * (28672 + 14336) * 2
    assert SPEC.bytes_moved((8, 18944), torch.float32) == 8 * 3 * 18944 * 4


# -- bad calls ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", ("eager", "torch_ops"))
@pytest.mark.parametrize("shape", [(3, 5), (7,), (0, 3), (2, 1)], ids=lambda s: "x".join(map(str, s)))
def test_an_odd_last_dim_is_refused_naming_x(shape, entry):
    fn = kforge.ops.silu_and_mul if entry == "eager" else torch.ops.kforge.silu_and_mul
    with pytest.raises(KforgeInputError, match=r"argument 'x' must have an even last dim") as info:
        fn(torch.randn(shape))
    assert (info.value.op, info.value.arg) == ("silu_and_mul", "x")
    x = torch.randn(3, 6)
    torch.testing.assert_close(fn(x), swiglu_fp64(x).float())  # the next valid call is served
