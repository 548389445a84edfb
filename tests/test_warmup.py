"""kforge.warmup builds what the first routed calls would: after it, the call an Inductor record
serves is decided and compiled, and runs at its steady cost."""
from __future__ import annotations

import pytest
import torch

import kforge
from helpers import make_record, write_user_table
from kforge.errors import KforgeInputError, UnknownNameError
from kforge.router import dispatch


def test_warmup_compiles_the_routed_implementation_before_the_first_call():
    write_user_table(make_record("rms_norm", (4, 64), impl="inductor", p50=0.5),
                     make_record("rms_norm", (4, 64), impl="vendor", p50=50.0))
    (done,) = kforge.warmup(("rms_norm", (4, 64), torch.float32), device="cpu")
    assert (done["op"], done["shape"], done["dtype"]) == ("rms_norm", [4, 64], "float32")
    assert kforge.stats()["ops"]["rms_norm"]["by_impl"] == {"inductor": 1}
    decided = dict(dispatch.ROUTER.ops["rms_norm"].decisions)
    assert [d.impl for d in decided.values()] == ["inductor"]  # decided (and built) by warmup
    x, w = torch.randn(4, 64), torch.randn(64)
    out = kforge.ops.rms_norm(x, w, 1e-6)
    torch.testing.assert_close(out, torch.nn.functional.rms_norm(x, (64,), w, 1e-6))
    assert kforge.stats()["ops"]["rms_norm"]["by_impl"] == {"inductor": 2}
    assert dispatch.ROUTER.ops["rms_norm"].decisions == decided  # the call found warmup's decision


def test_warmup_runs_a_model_once_without_grad():
    calls = []

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.Parameter(torch.ones(16))

        def forward(self, x):
            calls.append(torch.is_grad_enabled())
            return kforge.ops.rms_norm(x, self.norm, 1e-6)

    (done,) = kforge.warmup(model=Block(), inputs=(torch.randn(2, 16),))
    assert done["model"] == "Block" and calls == [False]
    assert kforge.stats()["ops"]["rms_norm"]["calls"] == 1


def test_bad_warmup_calls_name_the_argument():
    with pytest.raises(KforgeInputError, match="kforge.warmup: argument 'calls' must be"):
        kforge.warmup(("rms_norm", (4, 64)))
    with pytest.raises(UnknownNameError):
        kforge.warmup(("rms_nrom", (4, 64), torch.float32), device="cpu")
