"""torch.compile(backend="kforge"): registration, the rewrites of the Llama-style decoder block,
near misses left alone, compile-time routing from the score table, dynamic shapes, options,
kforge.explain, and (one test, the slowest) Inductor with its FX graph cache."""
from __future__ import annotations

import collections

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import kforge
from kforge.compile.models import LlamaBlocks, LlamaRMSNorm, MoEBlock
from helpers import make_record, write_user_table
from kforge.compile import Options, kforge_backend
from kforge.errors import UnknownNameError
from kforge.router.dispatch import COMPILED, KforgeFallbackWarning

EAGER = {"compiler": "eager", "on_miss": "kforge"}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compile_capture(model, options=None, **kwargs):
    """torch.compile through kforge_backend, keeping each rewritten GraphModule."""
    graphs = []

    def backend(gm, example_inputs):
        fn = kforge_backend(gm, example_inputs, options=options)
        graphs.append(gm)
        return fn

    return torch.compile(model, backend=backend, **kwargs), graphs


def kforge_calls(graphs) -> collections.Counter:
    """(op, overload) -> count of kforge op calls in the rewritten graphs."""
    found = collections.Counter()
    for gm in graphs:
        for n in gm.graph.nodes:
            if isinstance(n.target, torch._ops.OpOverload) and n.target.namespace == "kforge":
                found[(n.target._opname, n.target._overloadname)] += 1
    return found


def llama_inputs(batch=2, seq=5, hidden=64, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = LlamaBlocks(hidden=hidden).to(dtype).eval()
    for p in model.parameters():  # norms start at ones: perturb them so the weights matter
        p.data.add_(0.1 * torch.randn_like(p))
    x = torch.randn(batch, seq, hidden, dtype=dtype)
    pos = torch.arange(seq).expand(batch, seq)
    return model, x, pos


def test_the_backend_is_registered_once_through_its_entry_point():
    from torch._dynamo.backends.registry import lookup_backend, register_backend

    assert "kforge" in torch._dynamo.list_backends()
    assert lookup_backend("kforge") is kforge_backend
    with pytest.raises(AssertionError, match="duplicate name: kforge"):
        register_backend(kforge_backend, name="kforge")


@torch.no_grad()
def test_llama_block_is_rewritten_and_matches_eager_fullgraph():
    model, x, pos = llama_inputs()
    compiled, graphs = compile_capture(model, EAGER, fullgraph=True)
    torch.testing.assert_close(compiled(x, pos), model(x, pos), rtol=1e-5, atol=1e-5)
    calls = kforge_calls(graphs)
    # Layer 0's input norm is plain; every later norm follows a residual add (four of them,
    # the last being the final torch.nn.RMSNorm); each MLP's gate is a silu_and_mul. No table:
    # every match is a miss, routed per call (the default overload).
    assert calls[("rms_norm", "default")] == 1
    assert calls[("fused_add_rms_norm", "default")] == 4
    assert calls[("silu_and_mul", "default")] == 2
    assert calls[("rotary_embedding", "default")] == 2
    assert kforge.stats()["ops"]["fused_add_rms_norm"]["miss"] == 4
    eager_nodes = {n.target for gm in graphs for n in gm.graph.nodes}
    assert torch.rsqrt not in eager_nodes and F.silu not in eager_nodes and torch.rms_norm not in eager_nodes


@torch.no_grad()
def test_llama_block_in_bf16_stays_within_the_ops_budget():
    model, x, pos = llama_inputs(dtype=torch.bfloat16)
    compiled, graphs = compile_capture(model, EAGER, fullgraph=True)
    out, ref = compiled(x, pos), model(x, pos)
    reference = model.float()(x.float(), pos)  # kforge's ops round once, eager rounds every step
    err_kforge = (out.float() - reference).abs().max().item()
    err_eager = (ref.float() - reference).abs().max().item()
    assert err_kforge <= 2 * err_eager + 1e-2, (err_kforge, err_eager)
    assert kforge_calls(graphs)[("fused_add_rms_norm", "default")] == 4


@torch.no_grad()
def test_dynamic_batch_routes_per_call_without_recompiling():
    model, x, pos = llama_inputs(batch=2)
    compiled, graphs = compile_capture(model, EAGER)
    for batch in (2, 3, 5):
        xb, pb = torch.randn(batch, 5, 64), pos[:1].expand(batch, 5).contiguous()
        torch._dynamo.mark_dynamic(xb, 0)
        torch._dynamo.mark_dynamic(pb, 0)
        torch.testing.assert_close(compiled(xb, pb), model(xb, pb), rtol=1e-5, atol=1e-5)
    assert len(graphs) == 1  # one graph served all three batch sizes
    calls = kforge_calls(graphs)
    assert calls[("fused_add_rms_norm", "default")] == 4 and calls[("silu_and_mul", "default")] == 2
    assert not any(overload == "compiled" for _, overload in calls)
    assert kforge.stats()["ops"]["fused_add_rms_norm"]["calls"] == 12


@torch.no_grad()
def test_moe_block_with_dynamic_tokens_routes_per_call():
    torch.manual_seed(0)
    model = MoEBlock().eval()
    compiled, graphs = compile_capture(model, EAGER)
    for tokens in (3, 7, 16):
        x = torch.randn(tokens, 64)
        torch._dynamo.mark_dynamic(x, 0)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    assert len(graphs) == 1
    assert kforge_calls(graphs) == {("topk_softmax", "default"): 1, ("silu_and_mul", "default"): 1}
    assert kforge.stats()["ops"]["topk_softmax"]["calls"] == 3


class NearMisses(nn.Module):
    """RMSNorm and SwiGLU spellings that are not exactly kforge's ops, one per output."""

    def __init__(self, hidden=32):
        super().__init__()
        self.w = nn.Parameter(torch.rand(hidden) + 0.5)
        self.up = nn.Linear(hidden, 2 * hidden, bias=False)
        self.gate = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x):
        w = self.w
        eps_outside = x * (torch.rsqrt(x.pow(2).mean(-1, keepdim=True)) + 1e-6) * w
        eps_inside = x * torch.rsqrt((x.pow(2) + 1e-6).mean(-1, keepdim=True)) * w
        other_dim = x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + 1e-6) * w
        extra_op = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)).relu() * w
        var = x.pow(2).mean(-1, keepdim=True)  # the statistics are returned too: used elsewhere
        shared = x * torch.rsqrt(var + 1e-6) * w
        g, u = self.up(x).chunk(2, dim=-1)
        swapped = F.silu(u) * g
        separate = F.silu(self.gate(x)) * x
        over_rows = torch.softmax(x, dim=0)
        upcast = torch.softmax(x, dim=-1, dtype=torch.float64)
        return eps_outside, eps_inside, other_dim, extra_op, shared, var, swapped, separate, over_rows, upcast


@torch.no_grad()
def test_near_misses_are_left_alone_with_their_reasons():
    model = NearMisses()
    x = torch.randn(6, 32)
    compiled, graphs = compile_capture(model, EAGER, fullgraph=True)
    for got, want in zip(compiled(x), model(x)):
        torch.testing.assert_close(got, want)
    assert not kforge_calls(graphs)
    reasons = [e.reason for e in kforge.explain(model, x, options={"on_miss": "kforge"}).left]
    expected = ["rsqrt of the mean square with no eps added", "eps (or another term) is added inside the mean",
                "mean over dim 0, not the last", "the normalised x is not multiplied by a weight",
                "its intermediate", "silu gates the second half", "not the two halves of one tensor",
                "softmax over dim 0, not the last", "changes the result's dtype"]
    for text in expected:
        assert any(text in r for r in reasons), (text, reasons)


@torch.no_grad()
def test_a_weight_kept_in_fp32_under_bf16_activations_is_not_rewritten():
    norm = LlamaRMSNorm(32)  # weight stays fp32: HF's result is then fp32, not the input's bf16
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    explanation = kforge.explain(norm, x, options={"on_miss": "kforge"})
    assert not explanation.rewritten
    assert "not the input's torch.bfloat16" in explanation.left[0].reason


@torch.no_grad()
def test_compile_time_routing_bakes_the_tables_choice(fake_triton):
    model, x, pos = llama_inputs()
    rows_hidden = (10, 64)
    write_user_table(make_record("fused_add_rms_norm", rows_hidden, impl="triton:test-ok-fused", p50=1.0),
                     make_record("fused_add_rms_norm", rows_hidden, impl="vendor", p50=5.0),
                     make_record("rms_norm", rows_hidden, impl="vendor", p50=2.0),
                     make_record("rms_norm", rows_hidden, impl="inductor", p50=9.0),
                     make_record("silu_and_mul", (10, 128), impl="inductor", p50=1.0),
                     make_record("silu_and_mul", (10, 128), impl="vendor", p50=3.0))
    compiled, graphs = compile_capture(model, {"compiler": "eager"})
    torch.testing.assert_close(compiled(x, pos), model(x, pos), rtol=1e-5, atol=1e-5)
    baked = [n.args[-1] for gm in graphs for n in gm.graph.nodes
             if isinstance(n.target, torch._ops.OpOverload) and n.target._overloadname == "compiled"]
    # silu_and_mul's best is Inductor: with compiler="eager" Inductor's build is baked in too.
    # The rotary embedding (one per layer) has no record: with on_miss="kforge" it routes per call.
    assert sorted(baked) == ["inductor", "inductor", *["triton:test-ok-fused"] * 4, "vendor"]
    assert kforge_calls(graphs)[("rotary_embedding", "default")] == 2
    assert fake_triton.calls["triton:test-ok-fused"] == 4  # four fused norms, one forward


@torch.no_grad()
def test_with_inductor_a_miss_or_an_inductor_win_is_left_to_inductor(fake_triton):
    model, x, pos = llama_inputs()
    write_user_table(make_record("silu_and_mul", (10, 128), impl="inductor", p50=1.0),
                     make_record("silu_and_mul", (10, 128), impl="vendor", p50=3.0))
    from kforge.compile.rewrite import rewrite

    reports = []

    def backend(gm, example_inputs):
        reports.append(rewrite(gm, Options.parse({"compiler": "inductor"})))
        return gm.forward  # the plan is what is tested; no Inductor compile needed

    torch.compile(model, backend=backend)(x, pos)
    entries = reports[0].entries
    assert entries and not any(e.rewritten for e in entries)
    silu = [e for e in entries if e.op == "silu_and_mul"]
    assert len(silu) == 2 and all(e.impl == "inductor" and "table: inductor" in e.reason for e in silu)
    norms = [e for e in entries if e.op != "silu_and_mul"]
    assert norms and all("no usable record" in e.reason and "miss logged" in e.reason for e in norms)
    logged = {k.op for k in kforge._ROUTER.unflushed}
    assert {"rms_norm", "fused_add_rms_norm"} <= logged


def test_a_compiled_choice_that_cannot_serve_falls_back_to_routing(fake_triton):
    x, w = torch.randn(4, 16), torch.rand(16)
    want = torch.rms_norm(x, (16,), w, 1e-6)
    with pytest.warns(KforgeFallbackWarning, match="chosen when the graph was compiled"):
        got = torch.ops.kforge.rms_norm.compiled(x, w, 1e-6, "triton:test-ok-gone")
    torch.testing.assert_close(got, want)
    write_user_table(make_record("rms_norm", (4, 16), impl="triton:test-raise", p50=1.0))
    with pytest.warns(KforgeFallbackWarning, match="failed"):
        got = torch.ops.kforge.rms_norm.compiled(x, w, 1e-6, "triton:test-raise")
    torch.testing.assert_close(got, want)
    with kforge.use("rms_norm", "vendor"):  # a pin wins over the compiled choice
        torch.testing.assert_close(torch.ops.kforge.rms_norm.compiled(x, w, 1e-6, "triton:test-raise"), want)
    assert fake_triton.calls["triton:test-raise"] == 1


def test_with_grad_the_rewrites_route_per_call_and_backpropagate():
    model, x, pos = llama_inputs(batch=1, seq=3)
    x.requires_grad_(True)
    compiled, graphs = compile_capture(model, {"compiler": "aot_eager"})
    out = compiled(x, pos)
    out.square().sum().backward()
    got = [x.grad.clone()] + [p.grad.clone() for p in model.parameters()]
    x.grad = None
    model.zero_grad()
    model(x, pos).square().sum().backward()
    want = [x.grad] + [p.grad for p in model.parameters()]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert kforge_calls(graphs)[("fused_add_rms_norm", "default")] == 4


@pytest.mark.parametrize("options, message", [
    ({"compilr": "eager"}, "unknown option of the kforge backend 'compilr'"),
    ({"compiler": "tvm"}, "unknown compiler in the kforge backend's options 'tvm'"),
    ({"ops": ["rms_nrom"]}, "unknown op in the kforge backend's options['ops'] 'rms_nrom'"),
    ({"on_miss": "vendor"}, "unknown on_miss"),
    ({"compiler": "eager", "inductor": {"max_autotune": True}}, "needs compiler='inductor'"),
])
def test_bad_options_name_the_option(options, message):
    with pytest.raises((UnknownNameError, ValueError), match=message.replace("[", r"\[").replace("]", r"\]")):
        Options.parse(options)


@torch.no_grad()
def test_options_ops_limits_the_rewrites():
    model, x, pos = llama_inputs()
    compiled, graphs = compile_capture(model, {**EAGER, "ops": ["silu_and_mul"]})
    torch.testing.assert_close(compiled(x, pos), model(x, pos), rtol=1e-5, atol=1e-5)
    assert set(kforge_calls(graphs)) == {("silu_and_mul", "default")}


@torch.no_grad()
def test_explain_says_what_where_and_why():
    model, x, pos = llama_inputs()
    explanation = kforge.explain(model, x, pos)
    text = str(explanation)
    assert "0 rewritten" in text  # no table: every match is a miss, left to Inductor
    assert "models.py:" in text and "in forward" in text and "no usable record" in text
    as_dict = explanation.to_dict()
    assert as_dict["left"] == len(as_dict["entries"]) == 9
    explanation = kforge.explain(model, x, pos, options={"on_miss": "kforge"})
    assert {e.op for e in explanation.rewritten} >= {"rms_norm", "fused_add_rms_norm", "silu_and_mul"}
    assert not kforge._ROUTER.unflushed  # explaining logs no misses


@torch.no_grad()
def test_inductor_compiles_the_moe_block_with_the_router_rewritten(fake_triton):
    torch.manual_seed(0)
    model = MoEBlock().eval()
    x = torch.randn(5, 64)
    write_user_table(make_record("topk_softmax", (5, 8, 2, 1), impl="triton:test-ok-router", p50=1.0),
                     make_record("topk_softmax", (5, 8, 2, 1), impl="inductor", p50=20.0))
    compiled = torch.compile(model, backend="kforge", fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    assert fake_triton.calls["triton:test-ok-router"] == 1  # baked into Inductor's code, called once


@torch.no_grad()
def test_inductor_compiles_the_rewritten_graph_and_its_fx_cache_hits():
    from torch._dynamo.utils import counters

    model, x, pos = llama_inputs(batch=1, seq=4)
    options = {"on_miss": "kforge"}
    want = model(x, pos)
    torch.testing.assert_close(torch.compile(model, backend="kforge", options=options)(x, pos), want,
                               rtol=1e-5, atol=1e-5)
    assert kforge.stats()["ops"]["fused_add_rms_norm"]["calls"] == 4  # Inductor's code calls the kforge ops
    torch._dynamo.reset()
    hits = counters["inductor"]["fxgraph_cache_hit"]
    torch.testing.assert_close(torch.compile(model, backend="kforge", options=options)(x, pos), want,
                               rtol=1e-5, atol=1e-5)
    assert counters["inductor"]["fxgraph_cache_hit"] == hits + 1


@torch.no_grad()
def test_under_cuda_graphs_the_choice_is_by_device_time(fake_triton):
    # triton: 1 us on the device but 20 us of host per call; Inductor's code: 5 us on the device,
    # launched by the graph's own wrapper. Without CUDA graphs the host cost decides, with them not.
    norm = LlamaRMSNorm(64)
    x = torch.randn(8, 64)
    write_user_table(make_record("rms_norm", (8, 64), impl="triton:test-ok", p50=1.0, host=20.0),
                     make_record("rms_norm", (8, 64), impl="inductor", p50=5.0, host=90.0))
    default = kforge.explain(norm, x).entries[0]
    assert (default.rewritten, default.impl) == (False, "inductor")
    graphs = kforge.explain(norm, x, mode="reduce-overhead").entries[0]
    assert (graphs.rewritten, graphs.route, graphs.impl) == (True, "baked", "triton:test-ok")
    assert "1.0 us device" in graphs.reason


# -- mutations: Dynamo's graph is not functional yet ------------------------------------------------
class WritesState(nn.Module):
    """A KV-cache style write and a step counter, whose results nobody uses, beside a norm."""

    def __init__(self, hidden=32):
        super().__init__()
        self.w = nn.Parameter(torch.rand(hidden) + 0.5)
        self.register_buffer("steps", torch.zeros(()))
        self.register_buffer("cache", torch.zeros(4, hidden))

    def forward(self, x):
        self.steps.add_(1)
        self.cache.copy_(x)
        return F.rms_norm(x, (x.shape[-1],), self.w, 1e-6)


@torch.no_grad()
def test_in_place_writes_beside_a_rewrite_survive():
    model, x = WritesState(), torch.randn(4, 32)
    compiled, graphs = compile_capture(model, EAGER, fullgraph=True)
    for _ in range(2):
        torch.testing.assert_close(compiled(x), F.rms_norm(x, (32,), model.w, 1e-6))
    assert kforge_calls(graphs) == {("rms_norm", "default"): 1}
    assert model.steps.item() == 2 and torch.equal(model.cache, x)


class InPlaceResidual(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.w = nn.Parameter(torch.rand(hidden) + 0.5)

    def forward(self, h, r):
        alias = h
        h += r  # writes the caller's tensor: a fused_add_rms_norm would not
        return F.rms_norm(h, (h.shape[-1],), self.w, 1e-6), alias


@torch.no_grad()
def test_an_in_place_residual_add_is_not_fused():
    model = InPlaceResidual()
    h, r = torch.randn(4, 32), torch.randn(4, 32)
    h_eager, h_compiled = h.clone(), h.clone()
    want = model(h_eager, r)
    compiled, graphs = compile_capture(model, EAGER, fullgraph=True)
    got = compiled(h_compiled, r)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    torch.testing.assert_close(h_compiled, h_eager)  # the caller's tensor was written, as in eager
    assert ("fused_add_rms_norm", "default") not in kforge_calls(graphs)


class RotaryAroundAWrite(nn.Module):
    """q's rotation is written into a buffer that k reads before its own rotation."""

    def __init__(self, heads=2, seq=3, head_dim=8):
        super().__init__()
        from kforge.compile.models import RotaryEmbedding

        self.rope = RotaryEmbedding(head_dim)
        self.register_buffer("buf", torch.zeros(1, heads, seq, head_dim))

    def forward(self, q, k, pos):
        from kforge.compile.models import rotate_half

        cos, sin = self.rope(q, pos)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q_rot = q * cos + rotate_half(q) * sin
        self.buf.copy_(q_rot)
        k2 = k + self.buf
        return q_rot, k2 * cos + rotate_half(k2) * sin


@torch.no_grad()
def test_no_rewrite_moves_computation_across_a_mutation():
    model = RotaryAroundAWrite()
    q, k, pos = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8), torch.arange(3)[None]
    want = model(q, k, pos)
    model.buf.zero_()
    compiled, graphs = compile_capture(model, EAGER, fullgraph=True)
    for g, w in zip(compiled(q, k, pos), want):
        torch.testing.assert_close(g, w)
    explanation = kforge.explain(model, q, k, pos, options={"on_miss": "kforge"})
    assert any("mutates state between" in e.reason for e in explanation.left)


@torch.no_grad()
def test_rotary_output_keeps_eagers_contiguity_for_a_later_view():
    from kforge.compile.models import RotaryEmbedding, apply_rotary_pos_emb

    rope = RotaryEmbedding(16)

    def rotate_then_view(q, k, pos):
        cos, sin = rope(q, pos)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q.view(8, 5, 16), k.view(8, 5, 16)

    q, k, pos = torch.randn(2, 4, 5, 16), torch.randn(2, 4, 5, 16), torch.arange(5).expand(2, 5)
    compiled, graphs = compile_capture(rotate_then_view, EAGER, fullgraph=True)
    for g, w in zip(compiled(q, k, pos), rotate_then_view(q, k, pos)):
        torch.testing.assert_close(g, w)
    assert kforge_calls(graphs) == {("rotary_embedding", "default"): 1}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_rms_norm_without_eps_uses_torchs_default_in_half_precision(dtype):
    norm = nn.RMSNorm(32, eps=None).to(dtype)
    x = (1e-3 * torch.randn(4, 32)).to(dtype)  # small activations: eps decides the result
    compiled, graphs = compile_capture(norm, EAGER)
    torch.testing.assert_close(compiled(x), norm(x), rtol=2e-2, atol=1e-2)
    assert kforge_calls(graphs) == {("rms_norm", "default"): 1}


@torch.no_grad()
def test_explain_can_run_again_and_again():
    model, x, pos = llama_inputs()
    counts = {len(kforge.explain(model, x, pos).entries) for _ in range(10)}  # Dynamo's limit is 8
    assert counts == {9}


@torch.no_grad()
def test_a_failed_compiled_choice_is_routed_per_call_without_retrying(fake_triton):
    x, w = torch.randn(4, 16), torch.rand(16)
    with pytest.warns(KforgeFallbackWarning):
        for _ in range(5):
            torch.ops.kforge.rms_norm.compiled(x, w, 1e-6, "triton:test-ok-gone")
    sig = [k for k in kforge._ROUTER.ops["rms_norm"].decisions if k[0] is COMPILED]
    assert len(sig) == 1  # remembered: one warning, one table lookup, then routed per call
    assert kforge.stats()["ops"]["rms_norm"]["miss"] == 5
