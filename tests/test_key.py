"""Pure tests of `kforge.router.key`: the nearest-shape rule, address alignment, call facts."""
from __future__ import annotations

import itertools

import pytest
import torch

from kforge.ops import SPECS
from helpers import make_record
from kforge.records import Evidence
from kforge.router.key import (alignment, call_info, dtype_signature, exact_indices, is_empty, largest_verified,
                               nearest_shape, reaches, serving_shape)

HIDDEN = (1,)  # exact_idx of a (rows, hidden) problem


# -- nearest_shape -------------------------------------------------------------------------------
def test_exact_shape_is_its_own_nearest():
    assert nearest_shape((16, 64), [(8, 64), (16, 64), (32, 64)], HIDDEN) == (16, 64)


def test_exact_dims_must_match():
    assert nearest_shape((16, 64), [(16, 128), (16, 32), (16, 65)], HIDDEN) is None
    assert nearest_shape((16, 64), [(16, 128), (20, 64)], HIDDEN) == (20, 64)


@pytest.mark.parametrize("rows, expected", [
    (4, (16, 64)),  # 16 / 4 = 4: at the limit, served
    (3, None),  # 16 / 3 > 4
    (64, (16, 64)),  # 64 / 16 = 4
    (65, None),
    (1, None),
])
def test_factor_four_limit(rows, expected):
    assert nearest_shape((rows, 64), [(16, 64)], HIDDEN) == expected


def test_smallest_log_distance_wins():
    measured = [(16, 64), (64, 64)]
    assert nearest_shape((20, 64), measured, HIDDEN) == (16, 64)
    assert nearest_shape((40, 64), measured, HIDDEN) == (64, 64)  # log2 distance 0.68 < 1.32


@pytest.mark.parametrize("measured", list(itertools.permutations([(16, 64), (64, 64), (32, 128)])))
def test_tie_goes_to_the_larger_shape_whatever_the_order(measured):
    assert nearest_shape((32, 64), measured, HIDDEN) == (64, 64)


def test_every_non_exact_dim_must_be_within_the_limit_and_distances_add():
    # exact_idx () : every dim is free
    assert nearest_shape((8, 8), [(32, 32)], ()) == (32, 32)
    assert nearest_shape((8, 8), [(33, 8)], ()) is None  # one dim beyond 4x is enough to refuse
    # (16, 8) is 1 + 0 away, (4, 16) is 1 + 1 away
    assert nearest_shape((8, 8), [(4, 16), (16, 8)], ()) == (16, 8)


def test_zero_dims_count_as_one():
    assert nearest_shape((0, 64), [(1, 64)], HIDDEN) == (1, 64)
    assert nearest_shape((0, 64), [(4, 64)], HIDDEN) == (4, 64)
    assert nearest_shape((0, 64), [(5, 64)], HIDDEN) is None
    assert nearest_shape((3, 64), [(0, 64)], HIDDEN) == (0, 64)  # 3 vs "1": within 4x


def test_other_ranks_and_empty_measurements_are_ignored():
    assert nearest_shape((16, 64), [], HIDDEN) is None
    assert nearest_shape((16, 64), [(16, 1, 64), (64,)], HIDDEN) is None


# -- reaches: never more than the evidence verified -------------------------------------------------
@pytest.mark.parametrize("shape, expected", [
    ((16, 64), True),  # verified
    ((5, 64), True),  # fewer rows than verified
    ((32, 64), True),  # verified at 32 rows
    ((33, 64), False),  # more rows than any verified problem of that hidden
    ((16, 128), False),  # another hidden: exact
    ((16, 1, 64), False),  # another rank
])
def test_a_call_is_reached_only_by_a_verified_problem_at_least_as_large(shape, expected):
    assert reaches(shape, [(16, 64), (32, 64), (1000, 100)], HIDDEN) is expected


def test_every_non_exact_dim_must_fit_in_one_verified_problem():
    verified = [(64, 8), (8, 64)]  # an elementwise op, no exact dims: (64, 64) was never verified
    assert reaches((60, 8), verified, ()) and reaches((8, 60), verified, ())
    assert not reaches((64, 64), verified, ())
    assert largest_verified((3, 64), [(16, 64), (32, 64), (8, 128)], HIDDEN) == (32, 64)
    assert largest_verified((3, 65), [(16, 64)], HIDDEN) is None


def test_the_nearest_shape_is_one_whose_evidence_reaches_the_call():
    up_to_16 = Evidence(dtypes=("float32,float32",), shapes=((16, 64),), seeds=(0,), max_error_ratio=0.5)
    up_to_64 = Evidence(dtypes=("float32,float32",), shapes=((64, 64),), seeds=(0,), max_error_ratio=0.5)
    near, far = make_record(problem=(16, 64), evidence=up_to_16), make_record(problem=(64, 64), evidence=up_to_64)
    assert serving_shape((20, 64), [near, far], HIDDEN) == (64, 64)  # (16, 64) is nearer but verified less
    assert serving_shape((20, 64), [near], HIDDEN) is None  # a miss
    assert serving_shape((16, 64), [near, far], HIDDEN) == (16, 64)  # its own shape is always its own
    assert serving_shape((8, 64), [near, far], HIDDEN) == (16, 64)


def test_every_dim_is_exact_for_an_op_with_fixed_shapes():
    import dataclasses

    rms = SPECS["rms_norm"]
    assert exact_indices(rms) == (1,)
    assert exact_indices(dataclasses.replace(rms, fixed_shapes=True)) == (0, 1)


# -- alignment -----------------------------------------------------------------------------------
@pytest.mark.parametrize("low_bits", range(16))
def test_alignment_is_largest_power_of_two_dividing_the_address(low_bits):
    for high in (0, 16, 4096 * 16):
        address = high + low_bits
        expected = max(p for p in (1, 2, 4, 8, 16) if address % p == 0)
        assert alignment(address & 15) == expected


def test_alignment_examples():
    assert [alignment(b) for b in (0, 8, 4, 12, 2, 6, 1, 15)] == [16, 8, 4, 4, 2, 2, 1, 1]


# -- call_info -----------------------------------------------------------------------------------
DEVICE = "cpu|test|x86|torch0.0|tritonnone"
RMS = SPECS["rms_norm"]


def test_call_info_of_a_contiguous_call():
    x, w = torch.randn(2, 3, 64), torch.randn(64)
    info = call_info(RMS, (x, w, 1e-6), DEVICE)
    assert info.key.op == "rms_norm" and info.key.device == DEVICE
    assert info.key.dtypes == "float32,float32"
    assert info.key.shape == (6, 64)  # (rows, hidden)
    assert info.contiguous and info.aligned == 16 and not info.requires_grad


def test_call_info_of_a_sliced_tensor():
    base = torch.randn(8, 80)
    x = base[:, :64]  # rows strided by 80
    info = call_info(RMS, (x, torch.randn(64), 1e-6), DEVICE)
    assert info.key.shape == (8, 64)
    assert not info.contiguous
    assert info.aligned == 16  # starts where base starts


def test_call_info_of_an_expanded_tensor():
    x = torch.randn(1, 64).expand(8, 64)  # stride 0 over rows
    info = call_info(RMS, (x, torch.randn(64), 1e-6), DEVICE)
    assert info.key.shape == (8, 64)
    assert not info.contiguous


@pytest.mark.parametrize("dtype, offset, aligned", [
    (torch.float32, 1, 4), (torch.float32, 2, 8), (torch.float32, 3, 4), (torch.float32, 4, 16),
    (torch.bfloat16, 1, 2), (torch.bfloat16, 3, 2), (torch.bfloat16, 4, 8), (torch.float64, 1, 8),
])
def test_call_info_of_an_offset_tensor(dtype, offset, aligned):
    storage = torch.randn(offset + 4 * 64).to(dtype)
    assert storage.data_ptr() % 16 == 0
    x = storage[offset:offset + 4 * 64].view(4, 64)
    info = call_info(RMS, (x, torch.randn(64).to(dtype), 1e-6), DEVICE)
    assert info.contiguous  # offset, yet contiguous
    assert info.aligned == aligned
    assert info.key.shape == (4, 64)


def test_alignment_is_the_worst_over_all_tensor_arguments():
    w_storage = torch.randn(65)
    info = call_info(RMS, (torch.randn(4, 64), w_storage[1:], 1e-6), DEVICE)
    assert info.aligned == 4


def test_call_info_dtype_signature_and_grad():
    fused = SPECS["fused_add_rms_norm"]
    x = torch.randn(3, 17, dtype=torch.bfloat16)
    w = torch.randn(17, requires_grad=True)
    info = call_info(fused, (x, x.clone(), w, 1e-6), DEVICE)
    assert info.key.dtypes == "bfloat16,bfloat16,float32"
    assert info.key.shape == (3, 17)
    assert info.requires_grad
    assert dtype_signature((torch.randn(2, dtype=torch.float16),), (0,)) == "float16"
    assert call_info(SPECS["softmax"], (torch.randn(5, 4, 3, dtype=torch.float64),), DEVICE).key.shape == (20, 3)


def test_exact_indices_and_is_empty():
    assert exact_indices(RMS) == (1,)
    assert exact_indices(SPECS["softmax"]) == (1,)
    assert is_empty((torch.randn(0, 64), torch.randn(64), 1e-6), RMS.tensor_args)
    assert not is_empty((torch.randn(1, 64), torch.randn(64), 1e-6), RMS.tensor_args)
