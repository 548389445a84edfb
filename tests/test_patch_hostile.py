"""Hostile cases for kforge.patch / kforge.unpatch: inputs, workflows and model surgery where a
patched model might compute something else than the unpatched one, unpatch might not restore it,
or patch might crash. Tests marked xfail(strict=True) are defects found and not fixed yet (the
reason says what breaks); the others are cases that hold and must keep holding."""
from __future__ import annotations

import copy
import functools
import gc
import io
import sys
import threading
import weakref

import pytest
import torch
import torch.nn as nn

import kforge
from kforge.patching import mlp as patch_mlp
from kforge.patching import rotary

transformers = pytest.importorskip("transformers")
from hf_tiny import assert_patched_matches_own, calls, ids, release_rotary, tiny  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

@pytest.fixture(autouse=True)
def no_model_patched_before():
    release_rotary()
    yield


def modeling(model):
    return sys.modules[type(model.model.layers[0].self_attn).__module__]


def shares_storage(mlp) -> bool:
    return mlp.gate_proj.weight.untyped_storage().data_ptr() == mlp.up_proj.weight.untyped_storage().data_ptr()


def cos_sin(batch, seq, dim, dtype=torch.float32, seed=0):
    angles = torch.randn(batch, seq, dim // 2, generator=torch.Generator().manual_seed(seed))
    return torch.cat([angles.cos()] * 2, -1).to(dtype), torch.cat([angles.sin()] * 2, -1).to(dtype)


def qk(batch=2, seq=5, dim=16, dtype=torch.float32):
    gen = torch.Generator().manual_seed(9)
    return (torch.randn(batch, 4, seq, dim, generator=gen).to(dtype), torch.randn(batch, 2, seq, dim, generator=gen).to(dtype))


# --------------------------------------------------------------------------------------------
# Defects (xfail, strict): each reason says what breaks.
# --------------------------------------------------------------------------------------------

def test_gemma_norm_sees_weights_written_through_data():
    model = tiny("gemma2")
    x = ids()
    new = torch.randn(64, generator=torch.Generator().manual_seed(3))
    kforge.patch(model)
    with torch.no_grad():
        model(x)  # builds the shifted weight
        model.model.norm.weight.data.copy_(new)  # as diffusers' EMAModel.copy_to does
        got = model(x).logits
    kforge.unpatch(model)
    with torch.no_grad():
        expected = model(x).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("where", ["patch", "rebuild"])
def test_training_after_inference_mode_use(where):
    model = tiny("llama")
    x = ids()
    if where == "patch":
        with torch.inference_mode():
            kforge.patch(model)
    else:
        kforge.patch(model)
        model.to(torch.float64)  # the halves stop sharing: the next call builds the buffer again
        with torch.inference_mode():
            model.generate(x, max_new_tokens=2, do_sample=False)
    model.train()
    model(x, labels=x).loss.backward()  # raises RuntimeError today
    assert model.model.layers[0].mlp.gate_proj.weight.grad is not None


def test_torch_load_of_an_unpatched_model_while_another_is_patched():
    plain = tiny("llama")
    if not isinstance(modeling(plain).apply_rotary_pos_emb, nn.Module):
        pytest.skip("transformers without `kernels`: apply_rotary_pos_emb is a plain function")
    buf = io.BytesIO()
    torch.save(plain, buf)
    other = tiny("llama", seed=2)
    kforge.patch(other)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)  # TypeError: function() missing required argument 'code'
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, plain(x).logits)


def test_torch_save_of_a_patched_model():
    model = tiny("llama")
    kforge.patch(model)
    torch.save(model, io.BytesIO())


def test_torch_save_and_load_of_a_model_with_patched_norms():
    model = tiny("llama")
    kforge.patch(model, kinds=("norm",))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits)


def test_user_hooks_on_gate_and_up_still_fire():
    model = tiny("llama")
    mlp = model.model.layers[0].mlp
    kforge.patch(model)
    seen = []
    mlp.gate_proj.register_forward_hook(lambda mod, args, out: seen.append("gate"))
    mlp.up_proj.register_forward_hook(lambda mod, args, out: seen.append("up"))
    with torch.no_grad():
        model(ids())
    assert sorted(seen) == ["gate", "up"]


def test_patch_does_not_feed_probe_inputs_to_user_hooks():
    model = tiny("llama")
    seen = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape))
    model.model.norm.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape))
    kforge.patch(model)
    assert seen == []
    with torch.no_grad():
        model(ids(batch=1, seq=3))
    assert seen == [(1, 3, 96), (1, 3, 64)]  # the hooks are back, and fire on the user's calls


class LoraLike(nn.Module):
    """PEFT's LoRA Linear in miniature: a base layer plus a low-rank delta, `.weight` is the base's."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base_layer = base
        self.lora_a = nn.Linear(base.in_features, 4, bias=False)
        self.lora_b = nn.Linear(4, base.out_features, bias=False)
        nn.init.normal_(self.lora_b.weight)

    @property
    def weight(self):
        return self.base_layer.weight

    def forward(self, x):
        return self.base_layer(x) + self.lora_b(self.lora_a(x))


def test_a_lora_wrapper_added_after_patch_is_honoured():
    model = tiny("llama")
    kforge.patch(model)
    torch.manual_seed(3)
    for layer in model.model.layers:
        layer.mlp.gate_proj = LoraLike(layer.mlp.gate_proj)
    assert_patched_matches_own(model, ids())


def test_an_activation_swapped_after_patch_is_honoured():
    model = tiny("llama")
    kforge.patch(model)
    for layer in model.model.layers:
        layer.mlp.act_fn = nn.GELU()
    assert_patched_matches_own(model, ids())


def test_unpatch_after_layers_were_pruned():
    model = tiny("llama")
    own = modeling(model).apply_rotary_pos_emb
    kforge.patch(model)
    model.model.layers = nn.ModuleList(list(model.model.layers)[:1])
    model.config.num_hidden_layers = 1
    kforge.unpatch(model)
    assert modeling(model).apply_rotary_pos_emb is own
    assert all("forward" not in vars(m) for m in model.modules())


def test_unpatch_under_a_forward_wrapper_added_after_patch():
    model = tiny("llama")
    kforge.patch(model)
    mlp = model.model.layers[0].mlp
    mlp._old_forward = mlp.forward
    mlp.forward = functools.partial(lambda old, *a, **k: old(*a, **k), mlp._old_forward)  # accelerate's shape
    kforge.unpatch(model)
    before = calls().get("silu_and_mul", 0)
    with torch.no_grad():
        model(ids())
    assert calls().get("silu_and_mul", 0) == before
    assert not shares_storage(mlp)


@pytest.mark.xfail(strict=True, reason="the process-wide rotary replacement reads only the first half of cos/sin: any "
                                       "caller of modeling_llama.apply_rotary_pos_emb with unequal halves gets another result")
def test_rotary_function_with_unequal_cos_halves():
    model = tiny("llama")
    kforge.patch(model)
    fn = modeling(model).apply_rotary_pos_emb
    q, k = qk()
    gen = torch.Generator().manual_seed(4)
    cos, sin = torch.randn(2, 5, 16, generator=gen), torch.randn(2, 5, 16, generator=gen)
    with torch.no_grad():
        got, expected = fn(q, k, cos, sin), _own(fn)(q, k, cos, sin)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("q_dtype,cos_dtype", [(torch.float32, torch.bfloat16), (torch.float32, torch.float64),
                                               (torch.float16, torch.bfloat16), (torch.bfloat16, torch.float32)])
def test_rotary_function_with_mixed_dtypes(q_dtype, cos_dtype):
    model = tiny("llama")
    kforge.patch(model)
    fn = modeling(model).apply_rotary_pos_emb
    q, k = qk(dtype=q_dtype)
    cos, sin = cos_sin(2, 5, 16, cos_dtype)
    with torch.no_grad():
        got, expected = fn(q, k, cos, sin), _own(fn)(q, k, cos, sin)
    assert got[0].dtype == expected[0].dtype and got[1].dtype == expected[1].dtype
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)


def test_rotary_cos_updated_in_place():
    model = tiny("llama")
    kforge.patch(model)
    fn = modeling(model).apply_rotary_pos_emb
    q, k = qk()
    cos, sin = cos_sin(2, 5, 16)
    with torch.no_grad():
        fn(q, k, cos, sin)
        new_cos, new_sin = cos_sin(2, 5, 16, seed=7)
        cos.copy_(new_cos)
        sin.copy_(new_sin)
        got, expected = fn(q, k, cos, sin), _own(fn)(q, k, cos, sin)
    torch.testing.assert_close(got, expected)


def test_norm_probe_catches_an_eps_kforge_does_not_read():
    model = tiny("llama", torch.bfloat16)
    own = type(model.model.norm)

    class EpsilonRMSNorm(own):
        def __init__(self, hidden, eps):
            super().__init__(hidden)  # variance_epsilon: the default 1e-6
            self.epsilon = eps  # what forward uses

        def forward(self, x):
            h = x.float()
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.epsilon)
            return self.weight * h.to(x.dtype)

    norm = EpsilonRMSNorm(64, 1e-5).to(torch.bfloat16)
    model.model.norm = norm
    kforge.patch(model, kinds=("norm",))
    small = (torch.randn(4, 64, generator=torch.Generator().manual_seed(5)) * 1e-3).to(torch.bfloat16)
    with torch.no_grad():
        got, expected = norm(small), type(norm).forward(norm, small)
    torch.testing.assert_close(got.float(), expected.float(), rtol=2 ** -6, atol=0.0)


def test_skipped_look_alikes_are_reported():
    model = tiny("llama", mlp_bias=True)
    own = type(model.model.norm)

    class EpsilonRMSNorm(own):
        def __init__(self, hidden):
            super().__init__(hidden)
            self.epsilon = vars(self).pop("variance_epsilon")

        def forward(self, x):
            h = x.float()
            return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.epsilon)).to(x.dtype)

    model.model.norm = EpsilonRMSNorm(64)
    report = kforge.patch(model)
    where = {e.where for e in report.patched + report.left}
    assert "model.layers.0.mlp" in where and "model.norm" in where


def test_out_of_range_labels_raise_what_eager_raises():
    model = tiny("llama")
    x = ids()
    labels = x.clone()
    labels[0, 3] = 500
    kforge.patch(model)
    with pytest.raises(IndexError), torch.no_grad():
        model(x, labels=labels)


def test_moving_a_patched_model_releases_the_old_buffer():
    model = tiny("llama")
    kforge.patch(model)
    mlp = model.model.layers[0].mlp
    old = weakref.ref(vars(mlp)[patch_mlp.FUSED][0])
    model.to(torch.bfloat16)
    gc.collect()
    assert old() is None
    x = ids()
    with torch.no_grad():
        model(x)  # the next call builds the bf16 buffer
    assert vars(mlp)[patch_mlp.FUSED][0].dtype == torch.bfloat16
    assert mlp.gate_proj.weight.untyped_storage().data_ptr() == mlp.up_proj.weight.untyped_storage().data_ptr()
    kforge.unpatch(model)
    assert "_apply" not in vars(mlp)


@pytest.mark.xfail(strict=True, reason="functional_call with other weights makes the fused-buffer rebuild reassign .data "
                                       "of the caller's own tensors (its gate and up tensors end up sharing one storage)")
def test_functional_call_leaves_the_callers_tensors_alone():
    model, other = tiny("llama"), tiny("llama", seed=7)
    params = {k: v.clone() for k, v in other.state_dict().items() if k != "lm_head.weight"}
    gate, up = params["model.layers.0.mlp.gate_proj.weight"], params["model.layers.0.mlp.up_proj.weight"]
    gate_ptr, up_ptr = gate.data_ptr(), up.data_ptr()
    kforge.patch(model)
    x = ids()
    with torch.no_grad():
        got = torch.func.functional_call(model, params, (x,)).logits
        torch.testing.assert_close(got, other(x).logits, rtol=1e-5, atol=1e-5)
    assert (gate.data_ptr(), up.data_ptr()) == (gate_ptr, up_ptr)


def test_patching_the_causal_lm_after_its_base_model_says_so():
    model = tiny("llama")
    kforge.patch(model.model)
    report = kforge.patch(model)
    norm = next(e for e in report.left if e.where == "model.norm")
    assert "kforge.patch" in norm.note and "accelerate" not in norm.note


# --------------------------------------------------------------------------------------------
# Cases that hold.
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_left_padding_offset_positions_and_decode(model_type):
    model = tiny(model_type)
    x = ids(batch=3, seq=6)
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    mask[1, :1] = 0
    x = x.masked_fill(mask == 0, 0)
    positions = torch.arange(5, 11).expand(3, 6)

    def run():
        with torch.no_grad():
            return (model(x, attention_mask=mask).logits, model(x, position_ids=positions).logits,
                    model.generate(x, attention_mask=mask, max_new_tokens=4, do_sample=False))

    expected = run()
    kforge.patch(model)
    before = calls().get("rotary_embedding", 0)
    got = run()
    assert calls().get("rotary_embedding", 0) > before
    kforge.unpatch(model)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-5)
    assert torch.equal(got[2], expected[2])


def test_static_cache_beam_search_and_sampling_match():
    model = tiny("llama")
    x = ids()

    def run():
        with torch.no_grad():
            torch.manual_seed(0)
            sampled = model.generate(x, max_new_tokens=5, do_sample=True, top_k=0)
            static = model.generate(x, max_new_tokens=5, do_sample=False, cache_implementation="static")
            beams = model.generate(x, max_new_tokens=5, do_sample=False, num_beams=3)
        return sampled, static, beams

    expected = run()
    kforge.patch(model)
    got = run()
    kforge.unpatch(model)
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


def _own(fn):
    """The model's own rotary function behind kforge's: the replaced global's original, or (with the
    `kernels` package) its Func module's class forward."""
    return fn.kforge_original if hasattr(fn, "kforge_original") else type(fn).forward.__get__(fn)


def test_rotary_function_broadcasts_a_batch_one_cos():
    model = tiny("llama")
    kforge.patch(model)
    fn = modeling(model).apply_rotary_pos_emb
    own = _own(fn)
    q, k = qk(batch=3)
    cos, sin = cos_sin(1, 5, 16)
    before = calls().get("rotary_embedding", 0)
    with torch.no_grad():
        got, expected = fn(q, k, cos, sin), own(q, k, cos, sin)
    assert calls().get("rotary_embedding", 0) == before + 1
    torch.testing.assert_close(got, expected)


def test_norm_on_non_contiguous_inputs():
    model = tiny("llama")
    norm = model.model.norm
    transposed = torch.randn(7, 3, 64).transpose(0, 1)
    strided = torch.randn(3, 128)[:, ::2]
    with torch.no_grad():
        expected = [norm(transposed), norm(strided)]
    kforge.patch(model)
    with torch.no_grad():
        got = [norm(transposed), norm(strided)]
    torch.testing.assert_close(got, expected)


def test_inference_mode_and_train_mode_without_grad():
    model = tiny("llama")
    x = ids()
    with torch.no_grad():
        expected = model(x).logits
    kforge.patch(model)
    with torch.inference_mode():
        infer = model(x).logits
    model.train()  # attention dropout is 0 in this config: train() changes nothing else here
    before = calls()
    with torch.no_grad():
        trained = model(x).logits
    assert calls().get("rms_norm", 0) > before.get("rms_norm", 0)
    torch.testing.assert_close(infer, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(trained, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", ["llama", "qwen2_moe"])
def test_fp16_models_match(model_type):
    model = tiny(model_type, torch.float16)
    x = ids()
    with torch.no_grad():
        expected, tokens = model(x).logits.float(), model.generate(x, max_new_tokens=4, do_sample=False)
    kforge.patch(model)
    with torch.no_grad():
        got, patched_tokens = model(x).logits.float(), model.generate(x, max_new_tokens=4, do_sample=False)
    assert (got - expected).abs().max() <= 2 ** -8 * expected.abs().max()
    assert torch.equal(patched_tokens, tokens)


def test_autocast_bf16_matches():
    model = tiny("llama")
    x = ids()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(x, labels=x)
    kforge.patch(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(x, labels=x)
    assert got.logits.dtype == expected.logits.dtype
    assert (got.logits.float() - expected.logits.float()).abs().max() <= 2 ** -6 * expected.logits.abs().max().float()


def test_threads_share_a_patched_model():
    model = tiny("llama")
    inputs = [ids(batch=b, seq=s, seed=b * 10 + s) for b, s in [(1, 5), (2, 7), (3, 4), (2, 9)]]
    with torch.no_grad():
        expected = [model(x).logits for x in inputs]
    kforge.patch(model)
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(4):
                with torch.no_grad():
                    results.setdefault(i, []).append(model(inputs[i]).logits)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, outs in results.items():
        for out in outs:
            torch.testing.assert_close(out, expected[i], rtol=1e-5, atol=1e-5)


def test_load_state_dict_into_a_patched_model():
    model, other = tiny("llama"), tiny("llama", seed=5)
    x = ids()
    with torch.no_grad():
        expected = other(x).logits
    kforge.patch(model)
    model.load_state_dict(other.state_dict())  # copy_ into the fused buffer's halves
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, expected, rtol=1e-5, atol=1e-5)
    fresh = tiny("llama")
    kforge.patch(fresh)
    fresh.load_state_dict(copy.deepcopy(other.state_dict()), assign=True)  # new Parameters: rebuilt
    with torch.no_grad():
        torch.testing.assert_close(fresh(x).logits, expected, rtol=1e-5, atol=1e-5)
    kforge.unpatch(fresh)
    assert not shares_storage(fresh.model.layers[0].mlp)


def test_save_pretrained_while_patched_and_after_unpatch(tmp_path):
    model = tiny("gemma2", tie_word_embeddings=True)  # tied embeddings
    x = ids()
    with torch.no_grad():
        expected = model(x).logits
    kforge.patch(model)
    model.save_pretrained(tmp_path / "patched")
    kforge.unpatch(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(tmp_path / "unpatched")
    for sub in ("patched", "unpatched"):
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / sub).eval()
        with torch.no_grad():
            assert torch.equal(loaded(x).logits, expected), sub


def test_unpatch_leaves_no_attribute_behind():
    model = tiny("llama")
    before = {name: set(vars(m)) for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = ids()
    kforge.patch(model)
    with torch.no_grad():
        model(x, labels=x)
        model.to(torch.float64)
        model(x)
        model.to(torch.float32)
        model(x)
    kforge.unpatch(model)
    assert {name: set(vars(m)) for name, m in model.named_modules()} == before
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # fp32 -> fp64 -> fp32 is exact
    assert not shares_storage(model.model.layers[0].mlp)


def test_reentrant_gradient_checkpointing_grads_match():
    model, plain = tiny("llama"), tiny("llama")
    for m in (model, plain):
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        m.train()
    kforge.patch(model)
    x = ids()
    model(x, labels=x).loss.backward()  # the first pass runs under no_grad: kforge ops; the recompute: HF's code
    plain(x, labels=x).loss.backward()
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_hooks_on_the_patched_module_itself_fire():
    model = tiny("llama")
    seen = []
    model.model.norm.register_forward_hook(lambda mod, args, out: seen.append("before"))
    kforge.patch(model)
    model.model.norm.register_forward_hook(lambda mod, args, out: seen.append("after"))
    model.model.layers[0].mlp.register_forward_pre_hook(lambda mod, args: (args[0] * 2,))
    x = ids()
    with torch.no_grad():
        got = model(x).logits
    assert seen == ["before", "after"]
    kforge.unpatch(model)
    with torch.no_grad():
        expected = model(x).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe"])
def test_bf16_router_ties_choose_the_same_experts(model_type):
    model = tiny(model_type, torch.bfloat16)
    gate = model.model.layers[0].mlp.gate
    tokens = torch.randn(200, 64, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    with torch.no_grad():
        gate.weight.mul_(0.05)  # logits of a few bf16 units: many exact ties
        expected = gate(tokens)
    kforge.patch(model)
    with torch.no_grad():
        got = gate(tokens)
        gate.weight.zero_()  # every expert tied
        all_tied = gate(tokens)
    kforge.unpatch(model)
    with torch.no_grad():
        own_all_tied = gate(tokens)
    assert torch.equal(got[2], expected[2]) and torch.equal(got[1], expected[1])
    assert torch.equal(all_tied[2], own_all_tied[2])


def test_gemma_norms_with_zero_and_minus_one_weights():
    model = tiny("gemma3_text")
    x = ids()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.zero_()
        model.model.norm.weight.fill_(-1.0)  # 1 + weight = 0: all-zero hidden states into lm_head
        expected = model(x).logits
    report = kforge.patch(model)
    assert report.counts()["rms_norm"] >= 5
    with torch.no_grad():
        got = model(x).logits
    torch.testing.assert_close(got, expected)


def test_two_model_classes_patched_at_once_and_unpatched_in_any_order():
    llama, qwen = tiny("llama"), tiny("qwen2")
    own_llama, own_qwen = modeling(llama).apply_rotary_pos_emb, modeling(qwen).apply_rotary_pos_emb
    x = ids()
    with torch.no_grad():
        expected = llama(x).logits, qwen(x).logits
    kforge.patch(llama)
    kforge.patch(qwen)
    with torch.no_grad():
        got = llama(x).logits, qwen(x).logits
    kforge.unpatch(llama)
    assert modeling(llama).__name__ not in rotary._ACTIVE and modeling(qwen).__name__ in rotary._ACTIVE
    kforge.unpatch(qwen)
    assert not rotary._ACTIVE
    assert modeling(llama).apply_rotary_pos_emb is own_llama and modeling(qwen).apply_rotary_pos_emb is own_qwen
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_patching_the_base_model_only():
    model = tiny("llama")
    x = ids()
    with torch.no_grad():
        expected = model(x, labels=x)
    report = kforge.patch(model.model)
    assert {e.op for e in report.patched} == {"rms_norm", "silu_and_mul", "rotary_embedding"}
    with torch.no_grad():
        got = model(x, labels=x)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)
    assert kforge.unpatch(model) is None  # the causal LM itself was not patched
    kforge.unpatch(model.model)
    assert all("forward" not in vars(m) for m in model.modules())
