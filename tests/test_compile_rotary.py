"""The torch.compile backend's rotary pattern: HF's q * cos + rotate_half(q) * sin, with k rotated
alongside, rewritten to one kforge.rotary_embedding call.

- the op against HF's layout directly, in fp64 (the rewrite's premise: cos's first half per token
  as the cache, the halves of a head as neox pairs);
- kforge.compile.models's LlamaBlocks: both layers' rotary rewritten, the block's output against eager
  at fp32 and bf16;
- the spellings that match (unsqueeze_dim 1 and 2, commuted products and sum, chunk halves,
  attention scaling, cos broadcast over the batch, the inverse rotate_half, partial rotary joined
  back, cos unsqueezed once for several layers, symbolic shapes), each against eager at fp32, bf16
  and fp64;
- near misses left alone with the reason kforge.explain shows.
"""
from __future__ import annotations

import pytest
import torch

import kforge
from kforge.compile.models import LlamaBlocks, apply_rotary_pos_emb, rotate_half
from kforge.compile.backend import Options
from kforge.compile.graph import canon
from kforge.compile.rewrite import rewrite
from kforge.specs.rotary_embedding import reference, vendor

BATCH, SEQ, HEADS, KV_HEADS, HEAD_DIM = 2, 5, 4, 2, 16
BF16_ULP = 2.0 ** -8  # bf16's spacing just above 1


def _rope_calls(gm) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and "kforge.rotary_embedding" in str(n.target))


def _halves_negated(gm) -> list:
    """The negations of a slice or chunk of a tensor left in the graph: rotate_half's."""
    return [n for n in gm.graph.nodes if canon(n) == "neg" and canon(n.args[0]) == "getitem"]


def _compiled(fn, *inputs, ops=("rotary_embedding",), calls=(), reports=None):
    """fn(*inputs) through the rewrite (the graph then run eagerly); (output, rewritten graphs).
    `calls`: more input tuples for the same compiled function, whose outputs come third;
    `reports`: a list that receives each graph's rewrite report."""
    graphs = []
    opts = Options.parse({"compiler": "eager", "on_miss": "kforge", "ops": ops})

    def backend(gm, example_inputs):
        report = rewrite(gm, opts, len(graphs))
        if reports is not None:
            reports.append(report)
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=backend)
    with torch.no_grad():
        out = compiled(*inputs)
        more = [compiled(*c) for c in calls]
    return (out, graphs, more) if calls else (out, graphs)


def _cos_sin(position_ids, head_dim: int, dtype, scale: float | None = None, base: float = 10000.0):
    """HF's default rope: (batch, seq, head_dim) cos and sin in `dtype`, angles in fp32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = position_ids[..., None].float() * inv_freq  # (batch, seq, head_dim / 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    if scale is not None:  # HF's attention_scaling (YaRN, longrope)
        cos, sin = cos * scale, sin * scale
    return cos.to(dtype), sin.to(dtype)


def _inputs(dtype, batch=BATCH, seq=SEQ, head_dim=HEAD_DIM, seed=0, pos_batch=None):
    """q (batch, seq, heads, head_dim), k (batch, seq, kv_heads, head_dim) as projections lay them
    out, and position ids (pos_batch or batch, seq) starting at 3 (a continued sequence)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seq, HEADS, head_dim, generator=gen).to(dtype)
    k = torch.randn(batch, seq, KV_HEADS, head_dim, generator=gen).to(dtype)
    positions = (torch.arange(seq) + 3).expand(pos_batch or batch, seq).contiguous()
    return q, k, positions


# --- the spellings that are rewritten: fn(q, k, position_ids) -> (q_embed, k_embed) ---

def hf(q, k, position_ids):
    """HF Llama: q, k transposed to (batch, heads, seq, head_dim), unsqueeze_dim=1."""
    cos, sin = _cos_sin(position_ids, q.shape[-1], q.dtype)
    return apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)


def unsqueeze_2(q, k, position_ids):
    cos, sin = _cos_sin(position_ids, q.shape[-1], q.dtype)
    return apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)


def commuted(q, k, position_ids):
    cos, sin = _cos_sin(position_ids, q.shape[-1], q.dtype)
    cos, sin = cos[:, None], sin[:, None]
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    return torch.add(sin * rotate_half(q), cos * q), (rotate_half(k) * sin) + (k * cos)


def _rotate_half_chunk(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x2.neg(), x1), dim=-1)


def chunked(q, k, position_ids):
    cos, sin = _cos_sin(position_ids, q.shape[-1], q.dtype)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return q * cos + _rotate_half_chunk(q) * sin, k * cos + _rotate_half_chunk(k) * sin


def scaled(q, k, position_ids):
    cos, sin = _cos_sin(position_ids, q.shape[-1], q.dtype, scale=0.75)
    return apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)


def _rotate_half_inverse(x):
    half = x.shape[-1] // 2
    return torch.cat((x[..., half:], -x[..., :half]), dim=-1)


def inverse(q, k, position_ids):
    """rotate_half written cat((x2, -x1)): the rotation by -angle (the op's with sin negated)."""
    cos, sin = _cos_sin(position_ids, q.shape[-1], q.dtype)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return q * cos + _rotate_half_inverse(q) * sin, k * cos + _rotate_half_inverse(k) * sin


def partial(q, k, position_ids):
    """HF's partial rotary (Phi, GPT-NeoX): the first half of each head rotated, the rest joined back."""
    cos, sin = _cos_sin(position_ids, q.shape[-1] // 2, q.dtype)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    rot = cos.shape[-1]
    q_rot, q_pass = q[..., :rot], q[..., rot:]
    k_rot, k_pass = k[..., :rot], k[..., rot:]
    q_embed, k_embed = apply_rotary_pos_emb(q_rot, k_rot, cos, sin)
    return torch.cat((q_embed, q_pass), dim=-1), torch.cat((k_embed, k_pass), dim=-1)


def two_layers(q, k, position_ids):
    """cos and sin unsqueezed once for two layers, the second's q and k computed from the first's
    results: each layer pairs its own q and k, never the next layer's."""
    cos, sin = _cos_sin(position_ids, q.shape[-1], q.dtype)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    for _ in range(2):
        q_embed = q * cos + rotate_half(q) * sin
        k_embed = k * cos + rotate_half(k) * sin
        q, k = q_embed * 0.5 + k_embed.mean(2, keepdim=True), k_embed + q_embed[:, :, :KV_HEADS]
    return q, k


MATCHING = {"hf": hf, "unsqueeze_2": unsqueeze_2, "commuted": commuted, "chunked": chunked, "scaled": scaled,
            "inverse": inverse, "partial": partial, "two_layers": two_layers}
CALLS = {"two_layers": 2}


def _check_bf16(got, eager, oracle):
    """The op rounds once where eager rounds each product and the sum to bf16: no element further
    from the fp64 oracle than eager's own worst error plus one bf16 rounding of its magnitude."""
    for g, e, o in zip(got, eager, oracle):
        assert g.dtype == torch.bfloat16 and g.shape == e.shape
        err_eager = ((e.double() - o) / (o.abs() + 1)).abs().max()
        allowed = err_eager * (o.abs() + 1) + BF16_ULP / 2 * o.abs() + 1e-30
        assert ((g.double() - o).abs() <= allowed).all()
        # Where x1 * c - x2 * s cancels, eager's roundings of the products are large relative to the
        # result: bound the difference by the outputs' scale, not element by element.
        assert (g.double() - e.double()).abs().max() <= 2 * BF16_ULP * e.double().abs().max()


@pytest.mark.parametrize("name", MATCHING)
def test_spellings_rewritten_and_equal_to_eager(name):
    fn = MATCHING[name]
    q, k, pos = _inputs(torch.float32)
    got, (gm,) = _compiled(fn, q, k, pos)
    assert _rope_calls(gm) == CALLS.get(name, 1)
    assert not _halves_negated(gm), "an eager rotate_half is left in the graph"
    for g, e in zip(got, fn(q, k, pos)):
        assert g.shape == e.shape and g.dtype == e.dtype
        torch.testing.assert_close(g, e, rtol=0, atol=1e-6)  # the same fp32 products, each rounded once
    if name == "two_layers":
        return  # its bf16 mixing steps round too: fp32 covers it
    qb, kb = q.bfloat16(), k.bfloat16()
    got, (gm,) = _compiled(fn, qb, kb, pos)
    assert _rope_calls(gm) == 1
    _check_bf16(got, fn(qb, kb, pos), fn(qb.double(), kb.double(), pos))


@pytest.mark.parametrize("name", ["hf", "inverse", "partial"])
def test_fp64_rewrite_agrees_with_hf_in_fp64(name):
    """HF's sum computed in fp64 and the rewritten graph in fp64: the layouts agree to fp64's precision."""
    fn = MATCHING[name]
    q, k, pos = _inputs(torch.float64)
    got, (gm,) = _compiled(fn, q, k, pos)
    assert _rope_calls(gm) == 1
    for g, e in zip(got, fn(q, k, pos)):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)


def test_hf_layout_is_the_ops_neox_rotation_in_fp64():
    """apply_rotary_pos_emb (HF) in fp64 with arbitrary angles, against kforge.rotary_embedding's
    reference and vendor called as the rewrite calls them: tokens flattened, cache = first halves
    of cos and sin per token, positions = arange(tokens)."""
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(BATCH, HEADS, SEQ, HEAD_DIM, generator=gen, dtype=torch.float64)
    k = torch.randn(BATCH, KV_HEADS, SEQ, HEAD_DIM, generator=gen, dtype=torch.float64)
    freqs = torch.rand(BATCH, SEQ, HEAD_DIM // 2, generator=gen, dtype=torch.float64) * 50
    emb = torch.cat((freqs, freqs), -1)
    q_hf, k_hf = apply_rotary_pos_emb(q, k, emb.cos(), emb.sin())
    tokens = BATCH * SEQ
    cache = torch.cat((freqs.cos(), freqs.sin()), -1).reshape(tokens, HEAD_DIM)
    positions = torch.arange(tokens)
    q3 = q.transpose(1, 2).reshape(tokens, HEADS, HEAD_DIM)
    k3 = k.transpose(1, 2).reshape(tokens, KV_HEADS, HEAD_DIM)
    for impl in (reference, vendor):
        q_op, k_op = impl(q3, k3, positions, cache, True)
        q_op, k_op = (o.reshape(BATCH, SEQ, -1, HEAD_DIM).transpose(1, 2) for o in (q_op, k_op))
        torch.testing.assert_close(q_op, q_hf, rtol=0, atol=1e-12)
        torch.testing.assert_close(k_op, k_hf, rtol=0, atol=1e-12)


def test_cos_broadcast_over_the_batch():
    """HF passes position_ids of (1, seq): cos and sin are (1, seq, head_dim), broadcast over the batch."""
    q, k, pos = _inputs(torch.float32, pos_batch=1)
    got, (gm,) = _compiled(hf, q, k, pos)
    assert _rope_calls(gm) == 1
    for g, e in zip(got, hf(q, k, pos)):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-6)


def test_symbolic_shapes_route_per_call():
    """Batch and seq symbolic (head_dim stays static, as a model's config fixes it): one graph
    serves both calls, the op routed per call."""
    q, k, pos = _inputs(torch.float32, batch=3)
    q2, k2, pos2 = _inputs(torch.float32, batch=6, seq=9, seed=2)
    for t in (q, k, pos):
        torch._dynamo.mark_dynamic(t, 0)
        torch._dynamo.mark_dynamic(t, 1)
    got, graphs, (got2,) = _compiled(hf, q, k, pos, calls=[(q2, k2, pos2)])
    assert len(graphs) == 1 and _rope_calls(graphs[0]) == 1
    assert any(n.target is torch.ops.kforge.rotary_embedding.default for n in graphs[0].graph.nodes)
    for out, args in ((got, (q, k, pos)), (got2, (q2, k2, pos2))):
        for g, e in zip(out, hf(*args)):
            torch.testing.assert_close(g, e, rtol=0, atol=1e-6)


def test_a_pair_left_to_inductor_is_reported_once():
    """By default a match with no table record is left to Inductor: the pair is reported at its
    first add only, not again from its second."""
    q, k, pos = _inputs(torch.float32)
    torch._dynamo.reset()  # hf was compiled at other shapes: Dynamo would now make them symbolic
    with torch.no_grad():
        ex = kforge.explain(hf, q, k, pos)
    (entry,) = [e for e in ex.entries if e.pattern == "rotary"]
    assert not entry.rewritten and "no usable record" in entry.reason and "q_embed" in entry.where


def _llama(dtype):
    torch.manual_seed(0)
    model = LlamaBlocks().eval().to(dtype)
    x = torch.randn(BATCH, SEQ, 64).to(dtype)
    pos = torch.arange(SEQ).expand(BATCH, SEQ)
    return model, x, pos


def test_llama_blocks_fp32():
    """Every pattern on: both layers' rotary rewritten, and the block's output as eager's."""
    model, x, pos = _llama(torch.float32)
    got, (gm,) = _compiled(model, x, pos, ops=None)
    assert _rope_calls(gm) == 2
    with torch.no_grad():
        torch.testing.assert_close(got, model(x, pos), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        ex = kforge.explain(model, x, pos, options={"on_miss": "kforge"})
    rope = [e for e in ex.entries if e.pattern == "rotary"]
    assert len(rope) == 2 and all(e.rewritten for e in rope)
    assert not [e for e in ex.left if e.pattern == "rotary"]


def test_llama_blocks_bf16():
    """The rotary rewritten alone: the block's output no further from the fp64 model's than eager's
    error plus a few bf16 units (the rotary's outputs differ from eager's by about one unit)."""
    model, x, pos = _llama(torch.bfloat16)
    got, (gm,) = _compiled(model, x, pos)
    assert _rope_calls(gm) == 2
    with torch.no_grad():
        eager = model(x, pos).double()
        oracle = model.double()(x.double(), pos)
    scale = oracle.abs().max()
    err_eager, err_got = (eager - oracle).abs().max(), (got.double() - oracle).abs().max()
    assert err_got <= err_eager + 4 * BF16_ULP * scale, (err_got, err_eager)
    assert (got.double() - eager).abs().max() <= 8 * BF16_ULP * scale


# --- near misses: fn(q, k, position_ids) and the reason kforge.explain gives ---

def _rotate_half_in_place(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., :half], x[..., half:]), dim=-1)


def _rotate_half_both(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], -x[..., :half]), dim=-1)


def _rotate_half_unsigned(x):
    half = x.shape[-1] // 2
    return torch.cat((x[..., half:], x[..., :half]), dim=-1)


def _apply(rotate):
    def fn(q, k, position_ids):
        cos, sin = _cos_sin(position_ids, q.shape[-1], q.dtype)
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
        return q * cos + rotate(q) * sin, k * cos + rotate(k) * sin
    return fn


def halves_differ(q, k, position_ids):
    cos, sin = _cos_sin(position_ids, q.shape[-1], q.dtype)
    freqs = position_ids[..., None].float() * torch.linspace(0.1, 1, q.shape[-1] // 2)
    emb = torch.cat((freqs, 2 * freqs), -1)  # not one frequency per pair
    cos = emb.cos()
    return apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)


class CachedRope(torch.nn.Module):
    """cos and sin gathered from a precomputed table: their halves are equal in the data, which the
    graph does not show."""

    def __init__(self):
        super().__init__()
        cos, sin = _cos_sin(torch.arange(16)[None], HEAD_DIM, torch.float32)
        self.register_buffer("cos_cached", cos[0])
        self.register_buffer("sin_cached", sin[0])

    def forward(self, q, k, position_ids):
        return apply_rotary_pos_emb(q, k, self.cos_cached[position_ids], self.sin_cached[position_ids], 2)


def other_cos_for_k(q, k, position_ids):
    cos, sin = _cos_sin(position_ids, q.shape[-1], q.dtype)
    cos_k, _ = _cos_sin(position_ids + 1, q.shape[-1], q.dtype)
    cos, sin, cos_k = cos.unsqueeze(2), sin.unsqueeze(2), cos_k.unsqueeze(2)
    return q * cos + rotate_half(q) * sin, k * cos_k + rotate_half(k) * sin


def only_q(q, k, position_ids):
    cos, sin = _cos_sin(position_ids, q.shape[-1], q.dtype)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return q * cos + rotate_half(q) * sin, k * 2


def rotates_another_tensor(q, k, position_ids):
    cos, sin = _cos_sin(position_ids, q.shape[-1], q.dtype)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return q * cos + rotate_half(q + 1) * sin, k * cos + rotate_half(k) * sin


def promoted(q, k, position_ids):
    """cos and sin left in fp32 with bf16 q and k: the products, and the sums, are fp32."""
    cos, sin = _cos_sin(position_ids, q.shape[-1], torch.float32)
    return apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)


NEAR_MISSES = {
    "halves_in_place": (_apply(_rotate_half_in_place), torch.float32, "keeps the halves in place"),
    "both_negated": (_apply(_rotate_half_both), torch.float32, "negates both halves"),
    "none_negated": (_apply(_rotate_half_unsigned), torch.float32, "negates neither half"),
    "halves_differ": (halves_differ, torch.float32, "not cat((f, f), -1) of one tensor twice"),
    "cached_table": (CachedRope(), torch.float32, "cos is not traced back to cat((f, f), -1)"),
    "other_cos_for_k": (other_cos_for_k, torch.float32, "different cos or sin"),
    "only_q": (only_q, torch.float32, "only one tensor is rotated"),
    "rotates_another_tensor": (rotates_another_tensor, torch.float32, "not x * cos with the same x"),
    "promoted": (promoted, torch.bfloat16, "promote the products"),
}


@pytest.mark.parametrize("name", NEAR_MISSES)
def test_near_misses_left_alone_with_reason(name):
    fn, dtype, reason = NEAR_MISSES[name]
    q, k, pos = _inputs(dtype)
    reports = []
    got, (gm,) = _compiled(fn, q, k, pos, reports=reports)
    assert _rope_calls(gm) == 0
    rope = [e for r in reports for e in r.entries if e.pattern == "rotary"]
    assert rope and not any(e.rewritten for e in rope)
    assert any(reason in e.reason for e in rope), [e.reason for e in rope]
    for g, e in zip(got, fn(q, k, pos)):
        assert torch.equal(g, e)
