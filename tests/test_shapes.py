"""kforge.shapes: the models file and its checks on load."""
from __future__ import annotations

import copy
import fnmatch
import importlib.resources
import json
import re
from pathlib import Path

import pytest

from kforge import shapes
from kforge.errors import KforgeError
from kforge.shapes import ModelsFileError, UnknownModelError

ROOT = Path(__file__).resolve().parents[1]


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
