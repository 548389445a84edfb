"""kforge.patch / kforge.unpatch on tiny Hugging Face models of every supported class (real
transformers classes built from configs, random weights): logits and generated tokens match the
unpatched model, the kforge ops are really called, unpatch restores everything, and classes that
only look like the supported ones are left with the reason."""
from __future__ import annotations

import copy
import gc
import json
import sys
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import kforge
from kforge.errors import KforgeInputError
from kforge.patching import SUPPORTED, KforgePatchWarning, rotary

transformers = pytest.importorskip("transformers")  # in the test extra: CI has it
from hf_tiny import assert_patched_matches_own, calls, ids, release_rotary, tiny  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

# model_type -> the ops a patch must route through (configs: hf_tiny.EXTRA)
MODELS = {
    "llama": {"rms_norm", "silu_and_mul", "rotary_embedding", "cross_entropy"},
    "mistral": {"rms_norm", "silu_and_mul", "rotary_embedding", "cross_entropy"},
    "qwen2": {"rms_norm", "silu_and_mul", "rotary_embedding", "cross_entropy"},
    "qwen3": {"rms_norm", "silu_and_mul", "rotary_embedding", "cross_entropy"},
    "gemma2": {"rms_norm", "rotary_embedding", "cross_entropy"},  # a GELU gate: left
    "gemma3_text": {"rms_norm", "rotary_embedding", "cross_entropy"},
    "phi3": {"rms_norm", "silu_and_mul", "rotary_embedding", "cross_entropy"},
    "mixtral": {"rms_norm", "topk_softmax", "fused_moe", "rotary_embedding", "cross_entropy"},
    "qwen2_moe": {"rms_norm", "topk_softmax", "fused_moe", "silu_and_mul", "rotary_embedding", "cross_entropy"},
    "qwen3_moe": {"rms_norm", "topk_softmax", "fused_moe", "rotary_embedding", "cross_entropy"},
}


@pytest.fixture(autouse=True)
def no_model_patched_before():
    release_rotary()
    yield


def rotary_patched(modeling) -> bool:
    """Whether kforge's rotary function serves `modeling`'s attention: the global replaced, or (with
    the `kernels` package, whose Func module wraps the global) the Func's forward replaced."""
    fn = modeling.apply_rotary_pos_emb
    if isinstance(fn, nn.Module):
        return "forward" in vars(fn)
    return hasattr(fn, "kforge_original")


def test_every_supported_class_has_a_tiny_model_here():
    # gemma3 (the multimodal Gemma3ForConditionalGeneration) shares gemma3_text's modules.
    assert set(SUPPORTED) - set(MODELS) == {"gemma3"}


@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_patched_model_matches_and_routes(model_type):
    model = tiny(model_type)
    x = ids()
    with torch.no_grad():
        expected = model(x, labels=x)
    report = kforge.patch(model)
    assert {e.op for e in report.patched} == MODELS[model_type], str(report)
    before = calls()
    with torch.no_grad():
        got = model(x, labels=x)
    after = calls()
    for op in MODELS[model_type]:
        assert after.get(op, 0) > before.get(op, 0), f"{op} was patched but never called"
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-6)
    # Decode with a KV cache: one position at a time through the rotary function and the norms.
    with torch.no_grad():
        patched_tokens = model.generate(x[:1], max_new_tokens=5, do_sample=False)
    kforge.unpatch(model)
    with torch.no_grad():
        own_tokens = model.generate(x[:1], max_new_tokens=5, do_sample=False)
        restored = model(x, labels=x)
    assert torch.equal(patched_tokens, own_tokens)
    assert torch.equal(restored.logits, expected.logits)


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "mixtral", "phi3", "qwen2_moe"])
def test_bf16_within_a_rounding_or_two(model_type):
    model = tiny(model_type, torch.bfloat16)
    x = ids()
    with torch.no_grad():
        expected = model(x).logits.float()
    kforge.patch(model)
    with torch.no_grad():
        got = model(x).logits.float()
    # kforge rounds once in fp32 where the eager code rounds after each op: the logits (about 0.6
    # in magnitude) differ by a bf16 unit or two, not by a changed computation.
    assert (got - expected).abs().max() <= 2 ** -6 * expected.abs().max()


def test_unpatch_restores_modules_storage_rotary_and_loss():
    model = tiny("llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modeling = sys.modules[type(model.model.layers[0].self_attn).__module__]
    own_rotary = modeling.apply_rotary_pos_emb
    assert not rotary_patched(modeling)
    kforge.patch(model)
    mlp = model.model.layers[0].mlp
    gate, up = mlp.gate_proj.weight, mlp.up_proj.weight
    assert gate.untyped_storage().data_ptr() == up.untyped_storage().data_ptr()  # one buffer while patched
    assert rotary_patched(modeling)
    assert "forward" in vars(model.model.norm) and "_loss_function" in vars(model)
    report = kforge.unpatch(model)
    assert report is not None and report.patched
    assert all("forward" not in vars(m) for m in model.modules())
    assert mlp.gate_proj.weight is gate and mlp.up_proj.weight is up  # the same Parameter objects throughout
    assert gate.untyped_storage().data_ptr() != up.untyped_storage().data_ptr()
    assert modeling.apply_rotary_pos_emb is own_rotary and not rotary_patched(modeling)
    assert "_loss_function" not in vars(model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert kforge.unpatch(model) is None  # a second unpatch: nothing to undo


def test_rotary_stays_patched_until_the_last_model_is_unpatched():
    first, second = tiny("llama"), tiny("llama", seed=3)
    modeling = sys.modules[type(first.model.layers[0].self_attn).__module__]
    own = modeling.apply_rotary_pos_emb
    kforge.patch(first)
    kforge.patch(second)
    kforge.unpatch(first)
    assert rotary_patched(modeling)
    kforge.unpatch(second)
    assert modeling.apply_rotary_pos_emb is own and not rotary_patched(modeling) and not rotary._ACTIVE


def test_a_patched_model_collected_without_unpatch_releases_the_rotary_function():
    model = tiny("qwen3")
    modeling = sys.modules[type(model.model.layers[0].self_attn).__module__]
    own = modeling.apply_rotary_pos_emb
    kforge.patch(model)
    assert rotary_patched(modeling)
    del model
    gc.collect()
    assert modeling.apply_rotary_pos_emb is own and not rotary_patched(modeling)


def test_patch_twice_is_one_patch():
    model = tiny("llama")
    first = kforge.patch(model)
    assert kforge.patch(model) is first
    kforge.unpatch(model)
    assert all("forward" not in vars(m) for m in model.modules())


def test_gradients_take_the_models_own_code():
    model, plain = tiny("llama"), tiny("llama")
    model.train()
    plain.train()
    kforge.patch(model)
    x = ids()
    before = calls()
    model(x, labels=x).loss.backward()
    assert calls() == before  # with a gradient needed, no kforge op ran
    plain(x, labels=x).loss.backward()
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_deepcopy_of_a_patched_model_computes_with_its_own_weights():
    model = tiny("llama")
    kforge.patch(model)
    twin = copy.deepcopy(model)
    x = ids()
    with torch.no_grad():
        base = model(x).logits
        torch.testing.assert_close(twin(x).logits, base)
        twin.model.norm.weight.mul_(2.0)
        twin.model.layers[1].mlp.up_proj.weight.mul_(0.5)
        changed = twin(x).logits
        again = model(x).logits
    assert torch.equal(again, base)  # the original kept its weights
    assert not torch.allclose(changed, base)
    kforge.unpatch(twin)
    with torch.no_grad():
        torch.testing.assert_close(twin(x).logits, changed, rtol=1e-5, atol=1e-5)


def test_dtype_change_after_patch_rebuilds_the_shared_buffer():
    model = tiny("llama")
    plain = copy.deepcopy(model).to(torch.bfloat16)
    kforge.patch(model)
    model.to(torch.bfloat16)
    x = ids()
    with torch.no_grad():
        got, expected = model(x).logits.float(), plain(x).logits.float()
    assert (got - expected).abs().max() <= 2 ** -6 * expected.abs().max()
    mlp = model.model.layers[0].mlp
    assert mlp.gate_proj.weight.untyped_storage().data_ptr() == mlp.up_proj.weight.untyped_storage().data_ptr()


def test_kinds_subset_and_bad_arguments():
    model = tiny("mixtral")
    report = kforge.patch(model, kinds=("norm",))
    assert {e.op for e in report.patched} == {"rms_norm"}
    kforge.unpatch(model)
    with pytest.raises(KforgeInputError, match=r"patch.*kinds.*bogus"):
        kforge.patch(model, kinds=("norm", "bogus"))
    with pytest.raises(KforgeInputError, match=r"patch.*model.*Module"):
        kforge.patch("a model")
    with pytest.raises(KforgeInputError, match=r"unpatch.*model"):
        kforge.unpatch(42)


def test_unknown_class_is_left_untouched_with_one_warning():
    config = AutoConfig.for_model("gpt2", n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=16)
    model = AutoModelForCausalLM.from_config(config).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = kforge.patch(model)
    assert [w.category for w in caught] == [KforgePatchWarning]
    assert "gpt2" in report.message and "llama" in report.message and not report.patched
    assert all("forward" not in vars(m) for m in model.modules())
    with pytest.warns(KforgePatchWarning, match="no Hugging Face config"):
        kforge.patch(nn.Sequential(nn.Linear(4, 4)))


class OffsetRMSNorm(nn.Module):
    """Looks like an RMSNorm (name, weight, variance_epsilon) but adds 0.1: not rms_norm."""

    def __init__(self, hidden):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.variance_epsilon = 1e-6

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)) + 0.1


class SwappedMLP(nn.Module):
    """gate_proj / up_proj / down_proj and a SiLU, but the SiLU on up: not silu_and_mul's order."""

    def __init__(self, hidden, inter):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.gate_proj(x) * self.act_fn(self.up_proj(x)))


class LogitTopKRouter(nn.Module):
    """A ...Router that takes the top k of the raw logits (no softmax) and claims norm_topk_prob."""

    def __init__(self, experts, hidden, top_k):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(experts, hidden) * 0.1)
        self.top_k, self.norm_topk_prob = top_k, True

    def forward(self, x):
        logits = F.linear(x.reshape(-1, self.weight.shape[1]), self.weight)
        values, indices = torch.topk(logits, self.top_k, dim=-1)
        return logits, values, indices


def test_look_alikes_are_left_with_the_difference():
    model = tiny("mixtral")
    model.model.norm = OffsetRMSNorm(64)
    model.model.layers[0].mlp.gate = LogitTopKRouter(4, 64, 2)
    model.model.layers[1].extra_mlp = SwappedMLP(64, 32)  # not called by the model; patch still judges it
    report = kforge.patch(model)
    left = {e.where: e.note for e in report.left}
    assert "differs" in left["model.norm"]
    assert "model.layers.0.mlp.gate" in left and "model.layers.1.extra_mlp" in left
    assert "forward" not in vars(model.model.norm) and "forward" not in vars(model.model.layers[1].extra_mlp)
    assert any(e.where == "model.layers.1.mlp.gate" for e in report.patched)  # the real router still is
    assert_patched_matches_own(model, ids())


def test_a_router_whose_flag_lies_is_patched_as_it_computes():
    model = tiny("qwen2_moe")
    gate = model.model.layers[0].mlp.gate
    own = type(gate)

    class AlwaysRenormalisingRouter(own):
        def forward(self, hidden_states):  # renormalises whatever norm_topk_prob says
            saved, self.norm_topk_prob = self.norm_topk_prob, True
            try:
                return own.forward(self, hidden_states)
            finally:
                self.norm_topk_prob = saved

    gate.__class__ = AlwaysRenormalisingRouter
    gate.norm_topk_prob = False
    report = kforge.patch(model)
    entry = next(e for e in report.patched if e.where == "model.layers.0.mlp.gate")
    assert "(renormalised" in entry.note
    other = next(e for e in report.patched if e.where == "model.layers.1.mlp.gate")
    assert "not renormalised" in other.note  # Qwen2-MoE's default: norm_topk_prob False
    assert_patched_matches_own(model, ids())


def test_an_instance_forward_already_replaced_is_left():
    model = tiny("llama")
    norm = model.model.norm
    norm.forward = lambda x: type(norm).forward(norm, x)  # as accelerate's hooks do
    report = kforge.patch(model)
    assert "already replaced" in {e.where: e.note for e in report.left}["model.norm"]
    kforge.unpatch(model)
    assert "forward" in vars(norm)  # the user's own replacement is kept


def test_other_rotary_layouts_are_left(monkeypatch):
    model = tiny("llama")
    modeling = sys.modules[type(model.model.layers[0].self_attn).__module__]

    def interleaved(q, k, cos, sin, unsqueeze_dim=1):  # GPT-J's pairs, not rotate-half
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)

        def rot(x):
            return torch.stack((-x[..., 1::2], x[..., 0::2]), -1).flatten(-2)
        return q * cos + rot(q) * sin, k * cos + rot(k) * sin

    monkeypatch.setattr(modeling, "apply_rotary_pos_emb", interleaved)
    report = kforge.patch(model)
    left = {e.kind: e.note for e in report.left}
    assert "rotary_embedding" in left["rotary"]
    assert modeling.apply_rotary_pos_emb is interleaved
    kforge.unpatch(model)


def test_loss_with_num_items_and_padding_matches():
    model = tiny("qwen2")
    x = ids(batch=3, seq=9)
    labels = x.clone()
    labels[0, :4] = -100
    labels[2, 5:] = -100
    with torch.no_grad():
        expected = [model(x, labels=labels).loss, model(x, labels=labels, num_items_in_batch=torch.tensor(11)).loss]
    kforge.patch(model)
    before = calls().get("cross_entropy", 0)
    with torch.no_grad():
        got = [model(x, labels=labels).loss, model(x, labels=labels, num_items_in_batch=torch.tensor(11)).loss]
    assert calls()["cross_entropy"] == before + 2
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)


def test_report_is_json_and_fits_a_terminal():
    model = tiny("qwen2_moe")
    report = kforge.patch(model)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["model"] == "Qwen2MoeForCausalLM" and len(data["patched"]) == len(report.patched)
    assert report.counts()["rms_norm"] == 5
    assert all(len(line) <= 100 for line in str(report).splitlines()), str(report)


def test_torch_compile_of_a_patched_model_runs_the_models_own_code():
    model = tiny("llama")
    x = ids()
    with torch.no_grad():
        expected = model(x).logits
    kforge.patch(model)
    compiled = torch.compile(model, backend="eager", fullgraph=False)
    before = calls()
    with torch.no_grad():
        got = compiled(x).logits
    assert calls() == before
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
