"""cross_entropy's own cases; the generic tests (test_ops, test_bad_input, test_autograd,
test_catalog_provider, test_triton_backend) cover what every op shares.

- the reference against a Python loop (math.fsum), rounded once, with ignored rows, an ignore_index
  inside the vocabulary, int32 targets, rank 1 and 3;
- special values (NaN, +-inf logits, all -inf, targets out of range) in the reference, the vendor
  where it is defined, and the seeds;
- the vendor (F.cross_entropy on (rows, vocab)) on int32 targets;
- make_inputs' claims (losses around 2, ~5% ignored) and the shape bookkeeping;
- the gradient through both entries against softmax - onehot;
- bad calls naming 'target', 'ignore_index' and 'x';
- the seeds with int32 targets, and with their loops forced (test_seeds verifies those paths):
  a target in the last, partial block or chunk, a NaN in an ignored row.
The vendor within the budget, the seeds through the router and the harness are the grids'.
"""
from __future__ import annotations

import math

import pytest
import torch

from helpers import load_with_tunables

import kforge
from kforge.candidate import load_candidate
from kforge.catalog import seeds
from kforge.errors import KforgeInputError
from kforge.specs.cross_entropy import SPEC, fake, make_inputs, problem, reference, vendor
from kforge.testing import assert_matches_reference

DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
CPU_SETS = ("smoke", "odd", "edge")
ENTRIES = ("eager", "torch_ops")
NAN, INF = float("nan"), float("inf")


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def entry_point(entry: str):
    return kforge.ops.cross_entropy if entry == "eager" else torch.ops.kforge.cross_entropy


def loss_by_definition(x: torch.Tensor, target: torch.Tensor, ignore_index: int) -> list[float]:
    """Per row in Python floats: max + log(fsum(exp(x - max))) - x[target]; 0 when ignored."""
    rows = x.reshape(-1, x.shape[-1]).double().tolist()
    out = []
    for row, t in zip(rows, target.reshape(-1).tolist()):
        top = max(row)
        out.append(0.0 if t == ignore_index else top + math.log(math.fsum(math.exp(v - top) for v in row)) - row[t])
    return out


def seed_candidates():
    return [load_candidate(path, f"cross_entropy_seed_{path.stem}", SPEC) for path in seeds(SPEC)]


# -- the reference ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_reference_is_the_loss_by_definition_rounded_once(dtype):
    for shape, ignore_index, target_dtype in (((6, 37), -100, torch.int64), ((2, 3, 300), 5, torch.int32),
                                              ((1000,), -100, torch.int64)):
        x, target, _ = make_inputs(shape, dtype, "cpu", 3)
        x = x * 2  # logits out to +-16 as well as the usual spread
        target = target.to(target_dtype)
        if ignore_index >= 0:
            target[target == -100] = 7
            target.view(-1)[::4] = ignore_index  # an ignore_index that is also a class
        exact = torch.tensor(loss_by_definition(x, target, ignore_index), dtype=torch.float64).view(target.shape)
        got = reference(x, target, ignore_index)
        assert got.dtype == dtype and got.shape == target.shape
        assert (got[target == ignore_index] == 0).all() and (exact[target == ignore_index] == 0).all()
        # One rounding (half a unit) of an fp32 (fp64) computation that errs a few units of its own at
        # the logsumexp's magnitude (logsumexp - x[target] cancels it down to the loss).
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        lse = torch.logsumexp(x.double().view(-1, shape[-1]), -1).view(target.shape)
        bound = (0.5 * torch.finfo(dtype).eps * exact.abs() + 8 * torch.finfo(acc).eps * (lse.abs() + 1)
                 + torch.finfo(dtype).tiny)
        err = (got.double() - exact).abs()
        assert (err <= bound).all(), f"{shape}: worst {float((err / bound).max()):.3g} of the bound"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, in the interpreter, on inf - inf
def test_special_values_in_the_reference_the_vendor_and_the_seeds():
    x = torch.randn(10, 16, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([3, 4, 5, 6, 7, 16, -1, 2, 9, 1])
    x[0, 11] = NAN  # a NaN logit: NaN loss
    x[1, 2] = NAN  # ... unless the row is ignored
    target[1] = -100
    x[2, 0] = INF  # +inf: inf - inf, NaN (log_softmax's answer)
    x[3, 6] = -INF  # the target's logit is -inf: an infinite loss
    x[4] = -INF  # every logit -inf: NaN
    x[8, 0] = -INF  # -inf elsewhere: finite
    x[9] = 0.0  # equal logits: log(16)
    # Rows 5 and 6: target 16 (one past the vocabulary) and -1 (not the ignore_index): NaN.
    want = reference(x, target)
    assert want[[0, 2, 4, 5, 6]].isnan().all() and want[1] == 0 and want[3] == INF
    assert torch.isfinite(want[[7, 8, 9]]).all()
    torch.testing.assert_close(want[9], torch.tensor(math.log(16)))
    inside = [0, 1, 2, 3, 4, 7, 8, 9]  # the vendor raises on the others
    torch.testing.assert_close(vendor(x[inside], target[inside]), want[inside], equal_nan=True)
    with pytest.raises(IndexError):
        vendor(x, target)
    for candidate in seed_candidates():
        got = candidate.forward(x, target, -100)
        assert_matches_reference(SPEC, (x, target, -100), got)
        assert torch.equal(got.isnan(), want.isnan()) and got[3] == INF and got[1] == 0
        # An ignore_index that is a class, one past the vocabulary (a row ignored, not out of range).
        for ignore_index in (2, 16):
            assert_matches_reference(SPEC, (x, target, ignore_index), candidate.forward(x, target, ignore_index))


# -- the vendor ------------------------------------------------------------------------------------
def test_vendor_takes_int32_targets():
    """F.cross_entropy wants int64 targets: int32 ones reach it cast, and the losses stay within the
    budget (the budget itself, over every op, is test_ops')."""
    for dtype in (torch.bfloat16, torch.float32):
        x, target, ignore_index = make_inputs((5, 300), dtype, "cpu", 0)
        args = (x, target.int(), ignore_index)
        assert_matches_reference(SPEC, args, vendor(*args))


# -- inputs and sizes ------------------------------------------------------------------------------
def test_inputs_look_like_a_trained_lm_heads():
    for vocab in (1000, 32000, 128256):
        x, target, ignore_index = make_inputs((400, vocab), torch.float32, "cpu", 1)
        assert ignore_index == -100 and target.dtype == torch.int64
        ignored = target == ignore_index
        assert int(ignored.sum()) == 20  # one row in twenty
        assert ((target[~ignored] >= 0) & (target[~ignored] < vocab)).all()
        # Losses around log(1 + e^2) = 2.1 at every vocabulary, none near log(vocab) on average.
        median = float(reference(x, target)[~ignored].median())
        assert 1.5 < median < 3.0, (vocab, median)
    assert (make_inputs((1, 64), torch.float32, "cpu", 0)[1] != -100).all()  # a single row is a real token


def test_problem_fake_and_bytes():
    x, target, ignore_index = make_inputs((2, 3, 5), torch.bfloat16, "cpu", 0)
    assert target.shape == (2, 3) and problem((x, target, ignore_index)) == (6, 5)
    assert SPEC.shape_for((6, 5)) == (6, 5)
    assert fake(x.to("meta"), target.to("meta")).shape == (2, 3)
    x1, t1, _ = make_inputs((17,), torch.float32, "cpu", 0)  # one unbatched row: a 0-d loss
    assert t1.shape == () and reference(x1, t1).shape == () and problem((x1, t1, -100)) == (1, 17)
    # Every listed shape is a valid call; the GPU sets' tensors on meta.
    for shape in SPEC.shapes():
        SPEC.check((torch.empty(shape, device="meta"), torch.empty(shape[:-1], dtype=torch.int64, device="meta"), -100))
    # Llama 3 at 4096 tokens: bf16 logits read once, an int64 target and a bf16 loss per token.
    assert SPEC.bytes_moved((4096, 128256), torch.bfloat16) == 4096 * (128256 * 2 + 8 + 2)


# -- gradients -------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", ENTRIES)
def test_the_gradient_is_softmax_minus_onehot_and_zero_where_ignored(entry):
    x, target, ignore_index = make_inputs((40, 33), torch.float64, "cpu", 2)
    x.requires_grad_(True)
    g = torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad(entry_point(entry)(x, target, ignore_index), x, g)
    ignored = target == ignore_index
    onehot = torch.nn.functional.one_hot(target.clamp(min=0), 33).double()
    want = (torch.softmax(x.detach(), -1) - onehot) * g[:, None]
    want[ignored] = 0
    assert ignored.sum() == 2 and (grad[ignored] == 0).all()
    torch.testing.assert_close(grad, want, rtol=1e-12, atol=1e-14)


# -- bad calls -------------------------------------------------------------------------------------
BAD = {  # what -> (make bad (x, target, ignore_index) from valid ones, argument named, message, entries)
    "float_target": (lambda x, t, i: (x, t.float(), i), "target", "int64 or int32", ENTRIES),
    "uint8_target": (lambda x, t, i: (x, t.clamp(0, 9).to(torch.uint8), i), "target", "int64 or int32", ENTRIES),
    "short_target": (lambda x, t, i: (x, t[:-1], i), "target", r"must have shape \(4,\)", ENTRIES),
    "2d_target": (lambda x, t, i: (x, t[:, None], i), "target", r"must have shape \(4,\)", ENTRIES),
    "target_on_meta": (lambda x, t, i: (x, t.to("meta"), i), "target", "is on meta", ENTRIES),
    # torch.ops' schema refuses these (or turns a bool into an int) before kforge sees them.
    "list_target": (lambda x, t, i: (x, t.tolist(), i), "target", "must be a torch.Tensor", ("eager",)),
    "float_ignore_index": (lambda x, t, i: (x, t, -100.0), "ignore_index", "must be an int", ("eager",)),
    "bool_ignore_index": (lambda x, t, i: (x, t, True), "ignore_index", "must be an int", ("eager",)),
    "no_vocab": (lambda x, t, i: (x[:, :0], t, i), "x", "vocabulary", ENTRIES),
}


@pytest.mark.parametrize("what, entry", [(what, entry) for what, case in BAD.items() for entry in case[3]])
def test_bad_arguments_are_refused_naming_them(what, entry):
    make, arg, message, _ = BAD[what]
    valid = make_inputs((4, 64), torch.float32, "cpu", 0)
    with pytest.raises(KforgeInputError, match=f"argument '{arg}' .*{message}") as info:
        entry_point(entry)(*make(*valid))
    assert (info.value.op, info.value.arg) == ("cross_entropy", arg)
    assert_matches_reference(SPEC, valid, entry_point(entry)(*valid))  # the next valid call is served


# -- the catalog seeds -----------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on -inf - -inf in masked lanes
def test_the_seeds_take_int32_targets():
    x, target, ignore_index = make_inputs((9, 300), torch.bfloat16, "cpu", 4)
    for candidate in seed_candidates():
        want = candidate.forward(x, target, ignore_index)
        assert_matches_reference(SPEC, (x, target, ignore_index), want)
        assert torch.equal(candidate.forward(x, target.int(), ignore_index), want)


# The seeds' block and chunk loops (test_seeds verifies them): 16 blocks of 64 logits per row, or
# 4 chunks of 4 blocks, at 5 rows of 1000.
LOOPS = {"cross_entropy_online": ({"MAX_BLOCK": 64}, "_cross_entropy_row"),
         "cross_entropy_split": ({"BLOCK": 64, "PROGRAMS": 18}, "_chunk_stats")}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on -inf - -inf in masked lanes
@pytest.mark.parametrize("path", seeds(SPEC), ids=lambda p: p.stem)
def test_a_target_in_the_last_block_and_a_nan_in_an_ignored_row(path):
    changes, kernel_name = LOOPS[path.stem]
    candidate, recorder = load_with_tunables(path.read_text(), SPEC, changes, kernel_name)
    x, target, ignore_index = make_inputs((5, 1000), torch.float32, "cpu", 5)
    target[0], target[1] = 999, ignore_index  # the last, partial block or chunk; an ignored row
    x[1, 500] = NAN  # in another chunk of the ignored row
    got = candidate.forward(x, target, ignore_index)
    assert_matches_reference(SPEC, (x, target, ignore_index), got)
    assert got[1] == 0 and not got.isnan().any()
    assert recorder.launches[0][1]["BLOCK"] == 64  # the loop path, not one block per row
