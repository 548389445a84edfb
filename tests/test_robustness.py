"""Failure modes found in review: bad table locations, the miss log under contention, stale
imports, pins with nn.Parameter weights, and non-tensor arguments on a warm cache."""
from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

import kforge
from kforge.errors import KforgeInputError, KforgePinError
from kforge.router import dispatch, misses
from kforge.router.table import ScoreTable
from kforge.testing import assert_matches_reference

from helpers import make_record


def _rms_args():
    return kforge.ops.SPECS["rms_norm"].make_inputs((8, 64), torch.float32, "cpu", 0)


@pytest.mark.parametrize("where", ["home-is-a-file", "table-under-a-file"])
def test_an_unusable_table_location_still_serves_vendor(tmp_path, monkeypatch, where):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    if where == "home-is-a-file":
        monkeypatch.setenv("KFORGE_HOME", str(blocker))
    else:
        monkeypatch.setenv("KFORGE_TABLE", str(blocker / "table.json"))
    dispatch.reset()
    args = _rms_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = kforge.ops.rms_norm(*args)
    assert_matches_reference(kforge.ops.SPECS["rms_norm"], args, out)
    assert kforge.stats()["ops"]["rms_norm"]["miss"] == 1


def test_miss_counts_survive_a_failed_write(monkeypatch, kforge_home):
    kforge.ops.softmax(torch.randn(3, 5))
    calls = []

    def broken(counts, layouts=None):
        calls.append(counts)
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(misses, "merge", broken)
        assert kforge.flush() == []
    assert len(calls) == 1
    assert kforge.flush()  # the kept counts are written now
    assert misses.paths.home() == kforge_home
    (entry,) = [e for e in misses.read_all() if e["op"] == "softmax"]
    assert entry["misses"] == 1


def test_the_newest_record_wins_whatever_the_write_order():
    new = make_record(p50=1.0)
    old = dataclasses.replace(new, p50_us=99.0, p20_us=90.0, p80_us=120.0, timestamp="2020-01-01T00:00:00+00:00")
    table = ScoreTable()
    table.write([new])
    table.write([old])  # e.g. `kforge table --import` of a stale fleet table
    (kept,) = table.records(new.key.device, "rms_norm")
    assert kept.p50_us == 1.0


def test_pinned_implementation_without_backward_serves_parameters_under_no_grad(fake_triton):
    from helpers import write_user_table

    write_user_table(make_record(impl="triton:test-ok", p50=1.0))
    x, w, eps = _rms_args()
    weight = torch.nn.Parameter(w)
    with kforge.use("rms_norm", "triton:test-ok"):
        with torch.no_grad():
            out = kforge.ops.rms_norm(x, weight, eps)
        assert_matches_reference(kforge.ops.SPECS["rms_norm"], (x, w, eps), out)
        with pytest.raises(KforgePinError, match="require grad"):
            kforge.ops.rms_norm(x, weight, eps)
    assert fake_triton.calls["triton:test-ok"] == 1


def test_reset_inside_a_use_block_keeps_the_pin(fake_triton):
    with kforge.use("rms_norm", "triton:no-such-kernel"):
        kforge.reset()
        with pytest.raises(KforgePinError):
            kforge.ops.rms_norm(*_rms_args())
    from kforge.router import pins

    assert pins.STATE.live == 0 and not pins.STATE.active  # unpinned calls skip the pin lookup again


@pytest.mark.parametrize("entry", ["eager", "torch.ops"])
def test_a_non_tensor_argument_on_a_warm_cache_names_the_argument(entry):
    x, w, eps = _rms_args()
    call = kforge.ops.rms_norm if entry == "eager" else torch.ops.kforge.rms_norm
    call(x, w, eps)
    with pytest.raises(KforgeInputError, match="'weight'"):
        call(x, None, eps)
