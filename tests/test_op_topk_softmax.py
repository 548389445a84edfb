"""topk_softmax's own cases: the reference against a hand-written fp64 loop, the routing rule that
make_inputs derives k from, compare_view (ties either way; repeated, out-of-range, wrong and
misordered indices caught; NaN rows), kforge's weights in both modes (summing to one when
renormalized), bad k, and the catalog seed under Triton's interpreter: the harness rejects it
without its mask; ties, NaN and inf rows. The vendor within the budget, the seed through the router
and the harness are the grids' (test_ops, test_seeds)."""
from __future__ import annotations

import math

import pytest
import torch

import kforge
from kforge.catalog import seeds
from kforge.errors import KforgeInputError
from kforge.evaluate import harness
from kforge.evaluate.executors import InProcessExecutor
from kforge.specs import OutputMismatch
from kforge.specs.topk_softmax import MODEL_ROUTING, SPEC, routing
from kforge.testing import compare

DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
ENTRIES = ("eager", "torch_ops")


def entry_point(entry: str):
    return kforge.ops.topk_softmax if entry == "eager" else torch.ops.kforge.topk_softmax


def loop_topk_softmax(x: torch.Tensor, k: int, renormalize: bool):
    """Per row in Python floats: softmax with math.exp, then the k largest (lowest index first on
    ties), renormalized on request. Returns (weights, indices) as nested lists over rows."""
    rows = x.reshape(-1, x.shape[-1]).tolist()
    weights, indices = [], []
    for row in rows:
        top = max(row)
        e = [math.exp(v - top) for v in row]
        total = sum(e)
        picks = sorted(range(len(row)), key=lambda i: (-e[i], i))[:k]
        w = [e[i] / total for i in picks]
        if renormalize:
            s = sum(w)
            w = [v / s for v in w]
        weights.append(w)
        indices.append(picks)
    return weights, indices


# -- the reference ---------------------------------------------------------------------------------
@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("shape, k", [((5, 8), 2), ((3, 60), 4), ((2, 3, 33), 5), ((4, 7), 7), ((1, 1), 1)])
def test_reference_matches_a_python_loop(shape, k, renormalize):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(k), dtype=torch.float64) * 2
    weights, indices = SPEC.reference(x, k, renormalize)
    want_w, want_i = loop_topk_softmax(x, k, renormalize)
    assert weights.dtype == torch.float64 and indices.dtype == torch.int32
    assert indices.reshape(-1, k).tolist() == want_i  # no ties in random fp64 logits: the order is exact
    torch.testing.assert_close(weights, torch.tensor(want_w, dtype=torch.float64).reshape(weights.shape),
                               rtol=1e-13, atol=1e-15)
    # In fp32 (from fp32 logits) the same picks, weights to fp32 resolution.
    w32, i32 = SPEC.reference(x.float(), k, renormalize)
    assert w32.dtype == torch.float32
    torch.testing.assert_close(w32.double(), weights, rtol=4e-6, atol=1e-7)


def test_the_routing_rule_follows_real_models_and_exercises_both_modes():
    assert MODEL_ROUTING[8] == (2, True) and MODEL_ROUTING[64] == (6, False) and MODEL_ROUTING[128] == (8, True)
    for experts, (k, renormalize) in MODEL_ROUTING.items():
        _, got_k, got_renormalize = SPEC.make_inputs((3, experts), torch.float32, "cpu", 0)
        assert (got_k, got_renormalize) == (k, renormalize)
    assert routing(1) == (1, True) and routing(2) == (2, False) and routing(17) == (4, True) and routing(130) == (4, False)
    # Secret shapes perturb the expert count: every count gets a valid k, and both modes occur.
    ks = [routing(e) for e in range(1, 600)]
    assert all(1 <= k <= e for e, (k, _) in zip(range(1, 600), ks))
    assert {r for _, r in ks} == {False, True}


def test_problem_and_input_shape_round_trip():
    args = SPEC.make_inputs((2, 3, 64), torch.bfloat16, "cpu", 0)
    assert SPEC.problem(args) == (6, 64, 6, 0)
    assert SPEC.problem((args[0], 3, True)) == (6, 64, 3, 1)
    assert SPEC.shape_for((4096, 128, 8, 1)) == (4096, 128)
    x, k, renormalize = SPEC.make_inputs(SPEC.shape_for((4096, 128, 8, 1)), torch.float32, "cpu", 0)
    assert SPEC.problem((x, k, renormalize)) == (4096, 128, 8, 1)
    # x read once at its dtype, 4 + 4 bytes written per pick.
    assert SPEC.bytes_moved((4096, 256, 8, 1), torch.bfloat16) == 4096 * 256 * 2 + 4096 * 8 * 8


# -- compare_view ----------------------------------------------------------------------------------
def _call(shape=(6, 16), k=4, renormalize=False, seed=0):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 2
    return (x, k, renormalize), SPEC.reference(x, k, renormalize)


def test_a_tie_broken_the_other_way_is_accepted():
    x = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    x[0, 2] = x[0, 7] = x[0].max() + 1  # the two largest tie
    x[1] = 0.5  # every expert ties
    x[2, 4] = x[2, 5] = x[2, 6] = x[2].max() + 0.5  # three tie for the top two places
    args = (x, 2, True)
    weights, indices = SPEC.reference(*args)
    other = indices.clone()
    other[0] = torch.tensor([7, 2])
    other[1] = torch.tensor([9, 0])
    other[2] = torch.tensor([6, 4])
    assert not torch.equal(other, indices)
    result = compare(SPEC, args, (weights, other))
    assert result.ok, result.message
    # Tied entries select exactly equal probabilities.
    assert torch.equal(SPEC.compare_view(args, (weights, other))[1], SPEC.compare_view(args, (weights, indices))[1])


@pytest.mark.parametrize("what, edit, message", [
    ("repeated", lambda i: i[2].__setitem__(1, i[2][0]), "appears twice"),
    ("one past the end", lambda i: i[4].__setitem__(3, 16), "outside [0, 16)"),
    ("negative", lambda i: i[0].__setitem__(0, -1), "outside"),
    ("unwritten poison", lambda i: i[5].fill_(torch.iinfo(torch.int32).max), "outside"),
])
def test_structurally_bad_indices_are_an_output_mismatch(what, edit, message):
    args, (weights, indices) = _call()
    bad = indices.clone()
    edit(bad)
    with pytest.raises(OutputMismatch, match=message.replace("[", r"\[").replace(")", r"\)")):
        SPEC.compare_view(args, (weights, bad))
    result = compare(SPEC, args, (weights, bad))
    assert not result.ok and message in result.message, result.message


def test_a_wrong_or_misordered_pick_is_out_of_budget():
    args, (weights, indices) = _call(shape=(6, 16), k=4)
    p = torch.softmax(args[0].double(), -1)
    # In range and distinct, but the 4th pick replaced by the smallest entry of the row.
    wrong = indices.clone()
    wrong[3, 3] = int(p[3].argmin())
    result = compare(SPEC, args, (weights, wrong))
    assert not result.ok and "output 1" in result.message and "(3, 3)" in result.message, result.message
    # The right set in the wrong order (the weights still descending).
    swapped = indices.clone()
    swapped[1, [0, 1]] = indices[1, [1, 0]]
    result = compare(SPEC, args, (weights, swapped))
    assert not result.ok and "output 1" in result.message, result.message
    # The right indices with a weight off by a few units of fp32.
    off = weights.clone()
    off[2, 1] *= 1 + 1e-4
    assert not compare(SPEC, args, (off, indices)).ok
    assert compare(SPEC, args, (weights, indices)).ok


def test_nan_rows_take_any_distinct_in_range_indices_but_nan_weights():
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    x[1, 5] = float("nan")
    args = (x, 3, False)
    weights, indices = SPEC.reference(*args)
    assert weights[1].isnan().all() and not weights[[0, 2]].isnan().any()
    mine = indices.clone()
    mine[1] = torch.tensor([0, 1, 2])  # what the catalog seed returns for a NaN row
    assert compare(SPEC, args, (weights, mine)).ok
    repeated = mine.clone()
    repeated[1] = torch.tensor([0, 0, 2])
    assert "appears twice" in compare(SPEC, args, (weights, repeated)).message
    finite = weights.clone()
    finite[1] = torch.tensor([0.5, 0.3, 0.2])
    assert "non-finite mismatch" in compare(SPEC, args, (finite, mine)).message


# -- vendor ----------------------------------------------------------------------------------------
def test_renormalized_weights_sum_to_one_and_descend():
    x, k, _ = SPEC.make_inputs((64, 128), torch.bfloat16, "cpu", 3)
    for renormalize in (False, True):
        weights, indices = kforge.ops.topk_softmax(x, k, renormalize)
        assert compare(SPEC, (x, k, renormalize), (weights, indices)).ok
        assert (weights[:, :-1] >= weights[:, 1:]).all()
        if renormalize:
            torch.testing.assert_close(weights.sum(-1), torch.ones(64), rtol=0, atol=2e-7)
        else:  # the top 8 of 128 experts, not all of them
            assert (weights.sum(-1) < 1).all()


# -- bad calls -------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("k", [0, -1, 9, 100])
def test_k_outside_one_to_experts_is_refused_naming_k(k, entry):
    x = torch.randn(4, 8)
    with pytest.raises(KforgeInputError, match=r"argument 'k' must be in \[1, 8\]") as info:
        entry_point(entry)(x, k)
    assert (info.value.op, info.value.arg) == ("topk_softmax", "k")
    assert compare(SPEC, (x, 8, False), entry_point(entry)(x, 8)).ok  # k == experts is valid


@pytest.mark.parametrize("k", [True, 2.0, None, torch.tensor(2)])
def test_k_that_is_no_int_is_refused_naming_k(k):
    """Through kforge.ops; torch.ops' own schema parsing converts a bool to an int before kforge
    sees it, and refuses the rest with a RuntimeError."""
    x = torch.randn(4, 8)
    with pytest.raises(KforgeInputError, match="argument 'k' must be an int") as info:
        kforge.ops.topk_softmax(x, k)
    assert info.value.arg == "k"
    with pytest.raises(KforgeInputError, match="argument 'renormalize' must be a bool"):
        kforge.ops.topk_softmax(x, 2, 1)


# -- the catalog seed --------------------------------------------------------------------------------
def test_the_harness_rejects_the_seed_without_its_mask():
    """The seed with the picked lane left in place picks the same expert k times: compare_view
    catches it inside the harness's verification."""
    (path,) = seeds(SPEC)
    source = path.read_text()
    line = "        key = tl.where(cols == at[:, None], -1.0, key)\n"
    assert source.count(line) == 1
    result = harness.evaluate_source(source.replace(line, ""), "topk_softmax", dtypes=[torch.float32],
                                     verify_shapes=((3, 8),), executor=InProcessExecutor())
    assert not result.accepted and "appears twice" in result.reason, result.reason


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # numpy on -inf - -inf, as the reference
def test_the_seed_on_ties_nan_and_inf_rows_in_both_modes():
    """Loaded as the router loads it: lowest index first among ties, NaN rows (a NaN, +inf, all
    -inf) NaN-weighted with distinct indices, partial tiles of ROWS tokens."""
    from kforge.candidate import load_candidate

    candidate = load_candidate(seeds(SPEC)[0], "topk_softmax_seed_under_test", SPEC)
    x = torch.randn(37, 12, generator=torch.Generator().manual_seed(2))
    x[0] = 0.0
    x[1, 3] = float("nan")
    x[2, 7] = float("inf")
    x[3] = -float("inf")
    x[4, [9, 2]] = 5.0
    for renormalize in (False, True):
        weights, indices = candidate.forward(x, 3, renormalize)
        result = compare(SPEC, (x, 3, renormalize), (weights, indices))
        assert result.ok, result.message
        assert indices[0].tolist() == [0, 1, 2] and indices[4, :2].tolist() == [2, 9]
        assert weights[1:4].isnan().all() and not weights[[0, *range(4, 37)]].isnan().any()
        want_w, want_i = loop_topk_softmax(x[5:].double(), 3, renormalize)
        assert indices[5:].tolist() == want_i
        torch.testing.assert_close(weights[5:].double(), torch.tensor(want_w, dtype=torch.float64),
                                   rtol=2e-6, atol=1e-7)
