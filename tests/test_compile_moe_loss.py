"""The compile backend's MoE router (topk_softmax) and cross-entropy patterns: the spellings that
are rewritten (the op in the graph, the eager nodes gone, values against an fp64 oracle within the
op's budget and against eager), and the near misses left alone with their reason."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kforge.compile.models import MoEBlock
from kforge.compile.backend import Options
from kforge.compile.rewrite import rewrite
from kforge.specs.cross_entropy import SPEC as CROSS_ENTROPY
from kforge.specs.topk_softmax import SPEC as TOPK_SOFTMAX

DTYPES = (torch.float32, torch.bfloat16)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled(fn, *inputs):
    """fn(*inputs) through the kforge rewrite (compiler='eager', vendor on a table miss):
    (outputs, the rewritten GraphModule, the report's entries)."""
    box = {}

    def backend(gm, example_inputs):
        box["report"] = rewrite(gm, Options(compiler="eager", on_miss="kforge"))
        box["gm"] = gm
        return gm.forward

    with torch.no_grad():
        out = torch.compile(fn, backend=backend, fullgraph=True)(*inputs)
    return out, box["gm"], box["report"].entries


def calls(gm, op: str) -> list:
    overloads = (getattr(torch.ops.kforge, op).default, getattr(torch.ops.kforge, op).compiled)
    return [n for n in gm.graph.nodes if n.target in overloads]


def targets(gm) -> set:
    return {n.target for n in gm.graph.nodes}


def left(entries, pattern: str) -> str:
    """The reason the only entry of `pattern` was left alone."""
    mine = [e for e in entries if e.pattern == pattern]
    assert len(mine) == 1 and not mine[0].rewritten, mine
    return mine[0].reason


def within(got, want, tol, factor: float = 1.0):
    """|got - want| <= factor * (atol + rtol * |want|) elementwise, in fp64; NaN where want is."""
    got, want = got.double(), want.double()
    assert torch.equal(torch.isnan(got), torch.isnan(want)), (got, want)
    ok = ~torch.isnan(want)
    err = (got - want).abs()[ok]
    bound = factor * (tol.atol + tol.rtol * want.abs()[ok])
    assert (err <= bound).all(), f"error up to {(err / bound).max().item():.3g}x the bound (max {err.max().item():.3g})"


def logits(shape, dtype, seed=0):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 2).to(dtype)


# -- the MoE router --------------------------------------------------------------------------------
def mixtral(x):
    w = F.softmax(x, dim=1, dtype=torch.float)
    w, idx = torch.topk(w, 2, dim=-1)
    w /= w.sum(dim=-1, keepdim=True)
    return w.to(x.dtype), idx


def qwen(x):  # Qwen1.5-MoE / DeepSeek-V2: no renormalisation, fp32 weights
    w, idx = torch.topk(F.softmax(x.float(), -1), 4, dim=-1, sorted=False)
    return w, idx


def method(x):  # softmax in the logits' own dtype, then renormalised
    w, idx = x.softmax(-1).topk(2)
    return w / w.sum(-1, keepdim=True), idx


ROUTERS = {"mixtral": (mixtral, 2, True), "qwen": (qwen, 4, False), "method": (method, 2, True)}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ROUTERS)
def test_router_rewritten_and_matches_oracle(name, dtype):
    fn, k, renormalize = ROUTERS[name]
    x = logits((16, 60), dtype, seed=len(name))
    (w, idx), gm, entries = compiled(fn, x)
    (op,) = calls(gm, "topk_softmax")
    assert op.args[1:3] == (k, renormalize)
    assert not {torch.topk, F.softmax, torch.softmax} & targets(gm)
    assert not any(n.op == "call_method" and n.target in ("topk", "softmax") for n in gm.graph.nodes)
    # The router's softmax is claimed by topk_softmax: the plain softmax pattern never sees it.
    assert [e.pattern for e in entries] == ["moe-router"] and entries[0].rewritten
    want_w, want_idx = fn(x)
    assert w.dtype == want_w.dtype and idx.dtype == torch.int64 and w.shape == idx.shape == (16, k)
    # fp64 oracle: the picks' probabilities and the weights, renormalised where the code does.
    p = torch.softmax(x.double(), -1)  # (tokens, experts)
    top = p.topk(k, -1).values
    if renormalize:
        top = top / top.sum(-1, keepdim=True)
    tol = TOPK_SOFTMAX.tolerance(w.dtype, (16, 60, k, int(renormalize)))
    within(w.sort(-1, descending=True).values, top, tol)  # sorted=False may order them either way
    # Tie-safe: what the indices select, not the indices (bf16 logits tie at 60 experts).
    picked = p.gather(-1, idx).sort(-1, descending=True).values
    within(picked, p.topk(k, -1).values, TOPK_SOFTMAX.tolerance(torch.float32, (16, 60, k, 0)))
    assert (idx.sort(-1).values.diff(dim=-1) > 0).all()  # distinct experts per token
    if dtype == torch.float32:  # no ties in random fp32 logits: the same experts as eager, same weights
        assert torch.equal(idx.sort(-1).values, want_idx.sort(-1).values)
        torch.testing.assert_close(w.sort(-1).values, want_w.sort(-1).values, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_moe_block_router_and_experts_rewritten(dtype):
    torch.manual_seed(0)
    block = MoEBlock(hidden=32, experts=8, top_k=2, intermediate=48).to(dtype)
    h = torch.randn(12, 32).to(dtype)
    out, gm, entries = compiled(block, h)
    assert len(calls(gm, "topk_softmax")) == 1 and len(calls(gm, "silu_and_mul")) == 1
    (op,) = calls(gm, "topk_softmax")
    assert op.args[1:3] == (2, True)  # Mixtral's in-place `/=` renormalisation absorbed
    assert not {torch.topk, F.softmax, F.silu} & targets(gm)
    assert sorted(e.op for e in entries if e.rewritten) == ["silu_and_mul", "topk_softmax"]
    assert all(e.rewritten for e in entries)
    with torch.no_grad():
        want = block(h)
        oracle = block.double()(h.double())
    assert out.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    else:  # SwiGLU rounded once instead of twice: no further from fp64 than eager is, up to a unit
        eps = torch.finfo(dtype).eps
        err, eager_err = (out.double() - oracle).abs().max(), (want.double() - oracle).abs().max()
        assert err <= 2 * eager_err + eps * oracle.abs().max(), (err, eager_err)


def test_only_the_indices_used():
    def fn(x):
        _, idx = torch.topk(torch.softmax(x, -1, dtype=torch.float32), 3)
        return idx

    x = logits((9, 17), torch.bfloat16)
    idx, gm, _ = compiled(fn, x)
    assert len(calls(gm, "topk_softmax")) == 1
    assert idx.dtype == torch.int64 and torch.equal(idx.sort(-1).values, fn(x).sort(-1).values)


@pytest.mark.parametrize("source", [torch.float64, torch.int64], ids=str)
def test_a_cast_that_rounds_stays_before_the_op(source):
    def fn(x):
        return torch.topk(torch.softmax(x.float(), -1), 2)

    x = (logits((6, 8), torch.float64) * 4).to(source)
    (w, idx), gm, _ = compiled(fn, x)
    (op,) = calls(gm, "topk_softmax")
    assert op.args[0].meta["example_value"].dtype == torch.float32  # the cast, not the logits
    want_w, want_idx = fn(x)
    torch.testing.assert_close(w, want_w, rtol=1e-6, atol=1e-7)
    # Tie-safe (integer logits tie): the logits the picks select, in descending order.
    assert torch.equal(x.gather(-1, idx), x.gather(-1, want_idx))


def aux_loss(x):
    p = torch.softmax(x, -1, dtype=torch.float32)
    w, idx = torch.topk(p, 2)
    return w, idx, p.mean(0)


def softmax_dim0(x):
    return torch.topk(torch.softmax(x, 0), 2)


def topk_dim0(x):
    return torch.topk(torch.softmax(x, -1), 2, dim=0)


def smallest(x):
    return torch.topk(torch.softmax(x, -1), 2, largest=False)


def in_fp64(x):
    return torch.topk(torch.softmax(x, -1, dtype=torch.float64), 2)


def rounds_logits(x):
    return torch.topk(torch.softmax(x, -1, dtype=torch.bfloat16), 2)


def rounded_then_widened(x):  # bf16 probabilities widened: the top k are bf16 values in fp32
    return torch.topk(torch.softmax(x, -1).float(), 2)


def int_logits(x):
    return torch.topk(torch.softmax(x.long(), -1, dtype=torch.float32), 2)


@pytest.mark.parametrize("fn, dtype, reason", [
    (aux_loss, torch.float32, "also used by"),
    (softmax_dim0, torch.float32, "softmax over dim 0, not the last"),
    (topk_dim0, torch.float32, "topk over dim 0, not the last"),
    (smallest, torch.float32, "largest=False"),
    (in_fp64, torch.float32, "computes in torch.float32"),
    (rounds_logits, torch.float32, "rounds the torch.float32 logits"),
    (rounded_then_widened, torch.bfloat16, "topk of cast, not of a softmax"),
    (int_logits, torch.float32, "the logits are torch.int64"),
], ids=lambda v: getattr(v, "__name__", None) if callable(v) else None)
def test_router_near_misses_left_alone(fn, dtype, reason):
    x = logits((6, 8), dtype)
    out, gm, entries = compiled(fn, x)
    assert not calls(gm, "topk_softmax")
    assert reason in left(entries, "moe-router")
    for got, want in zip(out, fn(x)):
        torch.testing.assert_close(got, want)


def test_k_from_a_dynamic_size_left_alone():
    def fn(x, n):
        return torch.topk(torch.softmax(x, -1), n.shape[0])

    x, n = logits((6, 8), torch.float32), torch.zeros(3)
    torch._dynamo.mark_dynamic(n, 0)
    _, gm, entries = compiled(fn, x, n)
    assert not calls(gm, "topk_softmax")
    assert "not a constant int" in left(entries, "moe-router")


def wrong_dim_sum(x):
    w, idx = torch.topk(torch.softmax(x, -1), 2)
    return w / w.sum(0, keepdim=True), idx


def no_keepdim(x):  # (2, 2) / (2,): broadcasts over the other dim, so it is not the op's renorm
    w, idx = torch.topk(torch.softmax(x, -1), 2)
    return w / w.sum(-1), idx


def weights_kept(x):
    w, idx = torch.topk(torch.softmax(x, -1), 2)
    return w / w.sum(-1, keepdim=True), idx, w


@pytest.mark.parametrize("fn, note", [
    (wrong_dim_sum, "over dim 0, not the last"),
    (no_keepdim, "without keepdim=True"),
    (weights_kept, "also used elsewhere"),
], ids=lambda v: getattr(v, "__name__", None) if callable(v) else None)
def test_renormalisation_not_absorbed_stays_in_the_graph(fn, note):
    x = logits((2, 8), torch.float32)
    out, gm, entries = compiled(fn, x)
    (op,) = calls(gm, "topk_softmax")
    assert op.args[2] is False
    (entry,) = entries
    assert entry.rewritten and note in entry.note
    for got, want in zip(out, fn(x)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


# -- cross-entropy ---------------------------------------------------------------------------------
def lm_batch(dtype, rows=24, vocab=40, ignore_index=-100, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, vocab, generator=gen) * 2).to(dtype)
    target = torch.randint(0, vocab, (rows,), generator=gen)
    target[::5] = ignore_index
    return x, target


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("dtype, ignore_index", [(torch.float32, -100), (torch.bfloat16, 3)], ids=str)
def test_cross_entropy_reductions_match_oracle(dtype, ignore_index, reduction):
    x, target = lm_batch(dtype, ignore_index=ignore_index)

    def fn(x, target):
        return F.cross_entropy(x, target, ignore_index=ignore_index, reduction=reduction)

    out, gm, entries = compiled(fn, x, target)
    (op,) = calls(gm, "cross_entropy")
    assert op.args[2] == ignore_index and F.cross_entropy not in targets(gm)
    assert [e.rewritten for e in entries] == [True]
    want = fn(x, target)
    oracle = fn(x.double(), target)
    assert out.dtype == want.dtype == dtype and out.shape == want.shape
    if reduction == "none":
        assert (out[target == ignore_index] == 0).all()
    tol = CROSS_ENTROPY.tolerance(dtype, (24, 40))
    within(out, oracle, tol)
    within(out, want, tol, factor=2.0)
    if dtype == torch.float32:
        torch.testing.assert_close(out, want, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_all_ignored_as_eager(reduction):
    x, target = lm_batch(torch.float32, rows=4)
    target[:] = -100
    out, gm, _ = compiled(lambda x, t: F.cross_entropy(x, t, reduction=reduction), x, target)
    assert calls(gm, "cross_entropy")
    want = F.cross_entropy(x, target, reduction=reduction)
    if reduction == "mean":  # 0 / 0 targets
        assert out.isnan() and want.isnan()
    else:
        assert out.item() == want.item() == 0.0


def test_language_model_head_spelling_rewritten():
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.loss = nn.CrossEntropyLoss(ignore_index=0)

        def forward(self, logits, labels):  # (batch, seq, vocab), (batch, seq)
            return self.loss(logits.view(-1, logits.shape[-1]), labels.view(-1))

    x, target = lm_batch(torch.bfloat16, rows=12, ignore_index=0)
    out, gm, _ = compiled(Head(), x.view(3, 4, 40), target.view(3, 4))
    assert calls(gm, "cross_entropy") and F.cross_entropy not in targets(gm)
    oracle = F.cross_entropy(x.double(), target, ignore_index=0)
    within(out, oracle, CROSS_ENTROPY.tolerance(torch.bfloat16, (12, 40)))


def class_weights(x, t):
    return F.cross_entropy(x, t, weight=torch.linspace(0.5, 1.5, x.shape[1]))


def smoothed(x, t):
    return F.cross_entropy(x, t, label_smoothing=0.1)


def soft_targets(x, t):
    return F.cross_entropy(x, F.one_hot(t.clamp(min=0), x.shape[1]).float() * 0.9 + 0.1 / x.shape[1])


def classes_in_dim1(x, t):  # (batch, classes, seq), as F.cross_entropy lays out more dims
    return F.cross_entropy(x.view(2, 4, 3, 40).transpose(1, 3).reshape(2, 40, 12), t.clamp(min=0).view(2, 12))


def unbatched(x, t):
    return F.cross_entropy(x[0], t[1])


@pytest.mark.parametrize("fn, reason", [
    (class_weights, "class weights"),
    (smoothed, "label_smoothing=0.1"),
    (soft_targets, "class probabilities"),
    (classes_in_dim1, "3-D logits: F.cross_entropy's classes are dim 1"),
    (unbatched, "1-D logits"),
], ids=lambda v: getattr(v, "__name__", None) if callable(v) else None)
def test_cross_entropy_near_misses_left_alone(fn, reason):
    x, target = lm_batch(torch.float32)
    out, gm, entries = compiled(fn, x, target)
    assert not calls(gm, "cross_entropy")
    assert reason in left(entries, "cross-entropy")
    torch.testing.assert_close(out, fn(x, target))
