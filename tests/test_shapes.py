"""kforge.shapes: the models file, its checks on load, and the keys of each model's forward.

The facts checked come from outside the module: the models' published config.json numbers, and
the shape sets the specs' authors wrote down for Llama 3, Qwen 2.5, Mixtral and DeepSeek-V3. Every
model's keys are built by the op's own `make_inputs` on the meta device (no memory) and must pass
its `check` and give back the key's problem through its `problem`.
"""
from __future__ import annotations

import copy
import fnmatch
import importlib.resources
import json
import re
from pathlib import Path

import pytest
import torch

from kforge import shapes
from kforge.specs import meta_inputs
from kforge.errors import KforgeError, UnknownNameError
from kforge.shapes import BUILTIN_SPECS, Key, ModelsFileError, UnknownModelError

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = {"rms_norm", "fused_add_rms_norm", "layer_norm", "softmax", "silu_and_mul", "gemv", "rotary_embedding",
        "topk_softmax", "cross_entropy", "fused_moe"}
BF16 = torch.bfloat16


# -- the file -------------------------------------------------------------------------------------
def test_the_file_ships_as_package_data():
    resource = importlib.resources.files("kforge.shapes").joinpath("models.json")
    assert resource.is_file()
    assert shapes.table().path == str(resource)
    pyproject = (ROOT / "pyproject.toml").read_text()
    patterns = re.search(r"\[tool\.setuptools\.package-data\]\nkforge = \[(.*?)\]", pyproject, re.S).group(1)
    assert any(fnmatch.fnmatch("shapes/models.json", p.strip(' "')) for p in patterns.split(",")), patterns


def test_the_file_holds_enough_models_with_their_sources():
    models = shapes.models()
    assert len(models) >= 20
    assert len({m.source for m in models}) == len(models)
    assert shapes.default_tokens() == (1, 2, 4, 8, 16, 32, 64, 512, 1024, 2048, 4096, 8192, 16384)


def test_a_model_is_found_by_name_or_hugging_face_id():
    m = shapes.model("llama-3.1-8b")
    assert m.source == "meta-llama/Llama-3.1-8B"
    assert shapes.model(" Meta-Llama/Llama-3.1-8B") is m
    assert shapes.model("LLAMA-3.1-8B") is m
    assert shapes.model(m) is m


def test_an_unknown_model_names_the_closest():
    with pytest.raises(UnknownModelError) as info:
        shapes.model("llama-3-8b")
    assert isinstance(info.value, (KeyError, KforgeError))
    message = str(info.value)
    assert "closest: llama-3.1-8b" in message and "qwen3-8b" in message.split("valid:")[1]
    with pytest.raises(UnknownModelError, match="closest: qwen3-30b-a3b"):
        shapes.model("Qwen3-30B")


# -- facts ----------------------------------------------------------------------------------------
def test_llama_3_1_8b():
    k = shapes.keys("llama-3.1-8b", tokens=[17])
    assert k["rms_norm"] == [Key((17, 4096), BF16)] and k["fused_add_rms_norm"] == [Key((17, 4096), BF16)]
    assert k["silu_and_mul"] == [Key((17, 14336), BF16)]  # y's shape; x is the fused gate_up (17, 28672)
    assert k["rotary_embedding"] == [Key((17, 32, 8, 128), BF16)]
    assert k["softmax"] == [Key((17, 128256), BF16)]
    assert "layer_norm" not in k and "topk_softmax" not in k and "cross_entropy" not in k  # 17 tokens: decode


def test_the_specs_own_model_shapes_are_keys():
    """The shape sets the specs' authors wrote for Llama 3 8B / 70B, Qwen 2.5 7B and DeepSeek-V3."""
    def has(model, op, tokens, *wanted):
        found = {k.shape for k in shapes.keys(model, tokens=tokens, ops=[op])[op]}
        assert set(wanted) <= found, (model, op, set(wanted) - found)

    has("llama-3.1-8b", "gemv", [1], (1, 4096, 6144), (1, 4096, 4096), (1, 4096, 28672), (1, 14336, 4096),
        (1, 4096, 128256))
    has("llama-3.1-70b", "gemv", [1], (1, 8192, 10240), (1, 28672, 8192))
    has("qwen2.5-7b", "gemv", [1, 8], (1, 3584, 4608), (8, 18944, 3584))
    has("llama-3.1-70b", "rotary_embedding", [8], (8, 64, 8, 128))
    has("qwen2.5-7b", "rotary_embedding", [32], (32, 28, 4, 128))
    has("deepseek-v3", "rotary_embedding", [16], (16, 128, 1, 64))
    has("qwen2.5-7b", "silu_and_mul", [4096], (4096, 18944))
    has("llama-3.1-70b", "silu_and_mul", [2048], (2048, 28672))
    has("qwen2.5-0.5b", "softmax", [32], (32, 151936))
    has("qwen2.5-72b", "cross_entropy", [2048], (2048, 152064))
    has("deepseek-v3", "cross_entropy", [4096], (4096, 129280))
    has("mixtral-8x7b", "cross_entropy", [16384], (16384, 32000))


def test_moe_routers_and_experts():
    def problems(model, t):
        return shapes.problems(model, tokens=[t])

    assert problems("mixtral-8x7b", 4)["topk_softmax"] == [(4, 8, 2, 1)]
    assert problems("qwen3-30b-a3b", 4)["topk_softmax"] == [(4, 128, 8, 1)]
    assert problems("qwen3-235b-a22b", 4)["topk_softmax"] == [(4, 128, 8, 1)]
    assert problems("deepseek-v2-lite", 4)["topk_softmax"] == [(4, 64, 6, 0)]
    assert problems("qwen1.5-moe-a2.7b", 4)["topk_softmax"] == [(4, 60, 4, 0)]
    # Qwen3-30B-A3B: every layer routed (no dense MLP), 8 copies of each token into 768-wide experts.
    assert problems("qwen3-30b-a3b", 4)["silu_and_mul"] == [(32, 768)]
    # DeepSeek-V3: 3 dense layers (18432), experts top 8 of 2048, one shared expert of 2048;
    # its MLA latents are RMS-normed (kv 512, q 1536); a sigmoid router is no topk_softmax call.
    v3 = problems("deepseek-v3", 2)
    assert v3["silu_and_mul"] == [(2, 18432), (16, 2048), (2, 2048)]
    assert v3["rms_norm"] == [(2, 7168), (2, 512), (2, 1536)]
    assert "topk_softmax" not in v3 and any("sigmoid" in g for g in shapes.gaps("deepseek-v3"))
    gemv = {(n, k) for _, n, k in shapes.problems("deepseek-v3", tokens=[1])["gemv"]}
    assert {(1536, 7168), (24576, 1536), (576, 7168), (32768, 512), (7168, 16384), (256, 7168),
            (4096, 7168), (7168, 2048)} <= gemv  # q_a, q_b, kv_a, kv_b, o, router, expert/shared gate_up, down


def test_qk_norms_norm_kinds_and_gated_activations():
    assert shapes.problems("qwen3-8b", tokens=[3])["rms_norm"] == [(3, 4096), (96, 128), (24, 128)]
    assert shapes.problems("gemma-3-1b", tokens=[3])["rms_norm"] == [(3, 1152), (12, 256), (3, 256)]
    star = shapes.problems("starcoder2-7b", tokens=[5])
    assert star["layer_norm"] == [(5, 4608)] and "rms_norm" not in star and "fused_add_rms_norm" not in star
    assert "silu_and_mul" not in shapes.problems("gemma-2-9b", tokens=[5])  # GeGLU: no silu_and_mul
    assert shapes.problems("phi-2", tokens=[5])["rotary_embedding"] == [(5, 32, 32, 80, 32, 1)]  # partial rotary


def test_each_phase_gets_its_ops():
    decode = shapes.problems("qwen2.5-7b", tokens=[64])
    prefill = shapes.problems("qwen2.5-7b", tokens=[512])
    assert {"gemv", "softmax"} <= set(decode) and "cross_entropy" not in decode
    assert "cross_entropy" in prefill and not {"gemv", "softmax"} & set(prefill)
    # Mixtral's experts (gate_up 28672 x 4096; no dense MLP) at one token only: at more, an
    # expert's rows depend on the routing.
    assert (1, 28672, 4096) in shapes.problems("mixtral-8x7b", tokens=[1])["gemv"]
    assert (2, 28672, 4096) not in shapes.problems("mixtral-8x7b", tokens=[2])["gemv"]


def test_a_model_s_rotary_layout_the_spec_cannot_build_is_a_gap():
    """Llama 3.2 1B rotates its 64-dim heads by halves; rotary_embedding's make_inputs builds the
    interleaved layout for head size 64 (DeepSeek's), so the call is named, not keyed wrongly."""
    assert "rotary_embedding" not in shapes.problems("llama-3.2-1b", tokens=[1])
    assert any("head_size 64" in g and "neox" in g for g in shapes.gaps("llama-3.2-1b"))
    assert shapes.gaps("llama-3.1-8b") == []


def test_every_op_has_keys_from_three_models():
    counts = {op: 0 for op in BUILTIN}
    for m in shapes.models():
        for op in shapes.keys(m):
            counts[op] += 1
    assert set(BUILTIN_SPECS) == BUILTIN
    assert all(n >= 3 for n in counts.values()), counts


def test_keys_are_deduplicated_across_models():
    both = shapes.key_set(["llama-3.1-8b", "mistral-7b-v0.3"], tokens=[1])
    assert both["rms_norm"] == [Key((1, 4096), BF16)]
    assert len(both["softmax"]) == 2  # vocabularies 128256 and 32768
    merged = shapes.key_set(tokens=[1])
    assert all(len(set(found)) == len(found) for found in merged.values())


def test_bad_arguments_are_named():
    with pytest.raises(KforgeError, match="positive integers"):
        shapes.keys("qwen3-8b", tokens=[0])
    with pytest.raises(UnknownNameError, match="gemm"):
        shapes.keys("qwen3-8b", ops=["gemm"])
    with pytest.raises(KforgeError, match="int32"):
        shapes.keys("qwen3-8b", tokens=[1], dtype=torch.int32)
    assert shapes.keys("qwen3-8b", tokens=[1], ops=["softmax"], dtype=torch.float16) == {
        "softmax": [Key((1, 151936), torch.float16)]}


# -- every key is a call the spec accepts ---------------------------------------------------------
def test_every_model_s_keys_pass_the_spec_s_checks():
    """Every model's problems at a decode and a prefill count (1 and 16384: each op's every rule),
    built by the op's make_inputs on the meta device: its check accepts them and its problem is the
    key's. Other token counts change only a problem's first dim (below), which no check looks at."""
    wanted: dict[str, dict] = {}
    for m in shapes.models():
        problems = shapes.problems(m, tokens=[1, 16384])
        for op, found in shapes.keys(m, tokens=[1, 16384]).items():
            assert found == [Key(tuple(BUILTIN_SPECS[op].shape_for(p)), BF16) for p in problems[op]]
            wanted.setdefault(op, {}).update(dict.fromkeys(zip(problems[op], found)))
    for op, pairs in wanted.items():
        spec = BUILTIN_SPECS[op]
        for problem, key in pairs:
            args = meta_inputs(spec, key.shape, key.dtype)
            assert all(a.device.type == "meta" for a in args if isinstance(a, torch.Tensor))
            spec.check(args)
            assert args[spec.tensor_args[0]].dtype == key.dtype
            assert tuple(spec.problem(args)) == problem, (op, key)


def test_token_counts_scale_only_the_first_dim():
    """At t tokens each problem is one at 1 token (prefill-only ops: at 512) with its first dim
    (rows, tokens, m) scaled by t; only the routed experts' gemv keys are at 1 token alone."""
    for m in shapes.models():
        one, first_prefill = shapes.problems(m, tokens=[1]), shapes.problems(m, tokens=[512])
        for t in shapes.default_tokens():
            for op, found in shapes.problems(m, tokens=[t]).items():
                unit, base = (1, one[op]) if op in one else (512, first_prefill[op])
                scaled = [(p[0] * t // unit, *p[1:]) for p in base]
                assert set(found) <= set(scaled) if op == "gemv" else found == scaled, (m.name, op, t)


# -- the file's checks ----------------------------------------------------------------------------
BUNDLED = json.loads(importlib.resources.files("kforge.shapes").joinpath("models.json").read_text())


def _entry(data, name):
    return next(e for e in data["models"] if e["name"] == name)


def _set(name, field, value):
    def edit(data):
        target = _entry(data, name)
        *path, last = field.split(".")
        for part in path:
            target = target[part]
        target[last] = value
    return edit


HOSTILE = [
    (_set("llama-3.1-8b", "head_dim", -128), "'llama-3.1-8b'", "head_dim"),
    (_set("llama-3.1-8b", "hidden_size", True), "'llama-3.1-8b'", "hidden_size"),
    (_set("llama-3.1-8b", "hidden_sise", 4096), "'llama-3.1-8b'", "hidden_sise"),
    (_set("llama-3.1-8b", "norm", "batch"), "'llama-3.1-8b'", "norm"),
    (_set("llama-3.1-8b", "num_key_value_heads", 5), "'llama-3.1-8b'", "num_key_value_heads"),
    (_set("llama-3.1-8b", "rotary_dim", 129), "'llama-3.1-8b'", "rotary_dim"),
    (_set("llama-3.1-8b", "source", "../../etc/passwd"), "'llama-3.1-8b'", "source"),
    (_set("llama-3.1-8b", "name", "Llama 3.1\n8B"), "models[0]", "name"),
    (_set("mixtral-8x7b", "moe.num_experts_per_tok", 9), "'mixtral-8x7b'", "moe.num_experts_per_tok"),
    (_set("mixtral-8x7b", "moe.router", "softmax"), "'mixtral-8x7b'", "moe.router"),
    (_set("deepseek-v3", "mla.qk_rope_head_dim", 32), "'deepseek-v3'", "head_dim"),
    (_set("deepseek-v3", "moe.scoring_func", 1), "'deepseek-v3'", "moe.scoring_func"),
    (_set("qwen3-8b", "name", "llama-3.1-8b"), "'llama-3.1-8b'", "name"),  # a second model of that name
    (lambda data: data["tokens"].update(decode=[4, 2]), None, "tokens.decode"),
    (lambda data: data["tokens"].update(prefill=[32, 64]), None, "tokens"),
    (lambda data: data.update(models={}), None, "models"),
]


@pytest.mark.parametrize("edit, model, field", HOSTILE, ids=[f"{f}-{i}" for i, (_, _, f) in enumerate(HOSTILE)])
def test_an_invalid_file_is_refused_naming_model_and_field(tmp_path, edit, model, field):
    data = copy.deepcopy(BUNDLED)
    edit(data)
    path = tmp_path / "models.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelsFileError) as info:
        shapes.load(path)
    assert info.value.field == field and str(path) in str(info.value)
    assert model is None or model in str(info.value.model), info.value
    assert isinstance(info.value, KforgeError)


def test_a_file_that_is_not_json_or_too_large_is_refused(tmp_path):
    path = tmp_path / "models.json"
    for content in ("{", "x" * (2 << 20), "[" * 100000):
        path.write_text(content)
        with pytest.raises(ModelsFileError, match=re.escape(str(path))):
            shapes.load(path)
    path.write_text(json.dumps(BUNDLED))
    assert shapes.load(path).models == shapes.table().models
