"""The comparison and the poison fill work a chunk at a time (a prefill key's verification held ~34x
its input's bytes, past an H200 worker's device-memory cap); chunked, they must decide exactly what
the whole-tensor rule decides, and name the same first bad element."""
import pytest
import torch

import kforge.testing as T
from kforge.evaluate import memory
from kforge.ops import SPECS

SPEC = SPECS["rms_norm"]


def _case(rows=6, hidden=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, hidden, generator=gen).to(torch.bfloat16)
    w = torch.randn(hidden, generator=gen).to(torch.bfloat16)
    args = (x, w, 1e-6)
    return args, SPEC.reference(*args)


def _both(monkeypatch, args, out):
    whole = T.compare(SPEC, args, out)
    monkeypatch.setattr(T, "CHUNK", 7)  # chunks that cut rows, and a last partial chunk
    chunked = T.compare(SPEC, args, out)
    monkeypatch.setattr(T, "CHUNK", 1 << 24)
    return whole, chunked


def test_chunked_comparison_passes_what_the_whole_one_passes(monkeypatch):
    args, out = _case()
    whole, chunked = _both(monkeypatch, args, out)
    assert whole.ok and chunked.ok
    assert chunked.max_error == whole.max_error and chunked.worst_ratio == whole.worst_ratio


@pytest.mark.parametrize("where", [(0, 0), (2, 13), (5, 39)])
def test_chunked_comparison_names_the_first_bad_element(monkeypatch, where):
    args, out = _case()
    bad = out.clone()
    bad[where] += 4.0
    bad[5, 39] += 4.0  # a later bad element: the first one is reported
    whole, chunked = _both(monkeypatch, args, bad)
    assert not whole.ok and not chunked.ok
    assert chunked.index == whole.index == where
    assert chunked.message == whole.message


def test_chunked_comparison_places_non_finite_values(monkeypatch):
    args, out = _case()
    bad = out.clone()
    bad[4, 21] = float("nan")
    whole, chunked = _both(monkeypatch, args, bad)
    assert not chunked.ok and chunked.index == whole.index == (4, 21)
    assert "non-finite" in chunked.message


def test_the_reference_error_is_taken_over_the_whole_output(monkeypatch):
    """The budget's r is a max over every element: an element in the last chunk is allowed the
    error the reference makes in the first chunk."""
    args, out = _case()
    oracle = SPEC.oracle(args)
    low = out.clone()
    low[0, 0] = (oracle[0, 0] * 1.05).to(low.dtype)  # the reference at the dtype errs 5% here only
    near = out.clone()
    near[5, 39] = (oracle[5, 39] * 1.06).to(near.dtype)  # inside 2 * 5%, outside bf16's own floor
    whole = T.compare(SPEC, args, near, oracle=oracle, at_dtype=low)
    monkeypatch.setattr(T, "CHUNK", 7)
    chunked = T.compare(SPEC, args, near, oracle=oracle, at_dtype=low)
    assert whole.ok and chunked.ok and chunked.worst_ratio == whole.worst_ratio
    alone = T.compare(SPEC, args, near, oracle=oracle)  # without that reference error: over budget
    assert not alone.ok and alone.index == (5, 39)


def test_a_non_contiguous_output_is_compared_at_its_logical_indices(monkeypatch):
    args, out = _case()
    transposed = out.t().contiguous().t()  # same values, column-major strides
    transposed[3, 17] += 4.0
    whole, chunked = _both(monkeypatch, args, transposed)
    assert not chunked.ok and chunked.index == whole.index == (3, 17)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int32])
def test_garbage_fill_writes_every_element_across_chunks(monkeypatch, dtype):
    monkeypatch.setattr(memory, "FILL_CHUNK", 5)
    gen = torch.Generator().manual_seed(3)
    flat = torch.full((37,), 12345, dtype=dtype)
    memory._fill(flat, memory.Poison.GARBAGE, gen)
    assert not (flat == 12345).any()
    strided = torch.full((6, 8), 12345, dtype=dtype)[:, ::2]  # not contiguous: one draw
    memory._fill(strided, memory.Poison.GARBAGE, gen)
    assert not (strided == 12345).any()
    if dtype.is_floating_point:  # the spread real activations have, not a constant
        assert 1.0 < float(flat.float().std()) < 6.0
