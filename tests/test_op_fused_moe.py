"""fused_moe's own cases beyond the registry grids: what its docstring promises (a token may name an
expert twice; ids outside the experts are refused on a CPU), the vendor's two paths agreeing, the
seed on calls no shape set names, and the op's own secret shapes staying valid calls."""
from __future__ import annotations

import random

import pytest
import torch

import kforge
from helpers import load_with_tunables
from kforge.catalog import seeds
from kforge.errors import KforgeInputError
from kforge.specs import fused_moe
from kforge.specs.fused_moe import SPEC
from kforge.testing import assert_matches_reference


def seed_module(**tunables):
    """The catalog seed, stored and loaded as a candidate (its static check passed), tunables set."""
    (path,) = seeds(SPEC)
    return load_with_tunables(path.read_text(), SPEC, tunables, "_gate_up")[0]


def test_a_token_may_name_an_expert_twice():
    x, gate_up, down, weights, ids = SPEC.make_inputs((5, 32, 48, 4, 3), torch.float32, "cpu", 0)
    ids = ids.clone()
    ids[:, 1] = ids[:, 0]  # every token: its first expert in two slots
    args = (x, gate_up, down, weights, ids)
    for fn in (SPEC.vendor, kforge.ops.fused_moe, seed_module().forward):
        assert_matches_reference(SPEC, args, fn(*args))


def test_ids_outside_the_experts_are_refused_naming_the_argument():
    x, gate_up, down, weights, ids = SPEC.make_inputs((3, 16, 16, 4, 2), torch.float32, "cpu", 0)
    for bad in (4, -1):
        wrong = ids.clone()
        wrong[1, 0] = bad
        with pytest.raises(KforgeInputError, match="fused_moe.*topk_ids"):
            kforge.ops.fused_moe(x, gate_up, down, weights, wrong)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_vendors_grouped_and_per_expert_paths_agree(dtype, monkeypatch):
    args = SPEC.make_inputs((9, 40, 24, 5, 2), dtype, "cpu", 1)
    grouped = SPEC.vendor(*args)
    monkeypatch.setitem(fused_moe._GROUPED, ("cpu", dtype), False)  # as where torch._grouped_mm is missing
    per_expert = SPEC.vendor(*args)
    assert_matches_reference(SPEC, args, grouped)
    assert_matches_reference(SPEC, args, per_expert)
    torch.testing.assert_close(grouped, per_expert, rtol=2 * torch.finfo(dtype).eps, atol=2 * torch.finfo(dtype).eps)


@pytest.mark.parametrize("shape", [(37, 24, 40, 7, 3), (1, 16, 16, 16, 4), (70, 16, 24, 2, 1)])
def test_the_seed_on_shapes_no_set_names_in_both_regimes(shape):
    # (70, ..., 2, 1): 70 pairs over 2 experts is the prefill tiles; the others decode's.
    module = seed_module(PREFILL_BLOCK_M=16, PREFILL_BLOCK_N=16, PREFILL_BLOCK_K=16)
    args = SPEC.make_inputs(shape, torch.float32, "cpu", 2)
    assert_matches_reference(SPEC, args, module.forward(*args))


def test_the_secret_shapes_are_valid_calls_off_the_public_ones():
    public = SPEC.shapes("smoke", "odd", "edge")
    shapes = fused_moe.secret_shapes(public, random.Random(5), 12)
    assert len(shapes) == 12 and not set(shapes) & set(public)
    for tokens, hidden, inter, experts, k in shapes:
        assert 1 <= k <= experts and tokens >= 1 and hidden & (hidden - 1) and inter & (inter - 1)
    SPEC.check(SPEC.make_inputs(shapes[0], torch.float32, "cpu", 0))
