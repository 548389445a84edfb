"""The shapes kforge is tuned and benchmarked at: popular open models' dimensions, and the keys of
the built-in ops in each model's forward.

    from kforge import shapes
    m = shapes.model("llama-3.1-8b")            # or its Hugging Face id, "meta-llama/Llama-3.1-8B"
    shapes.keys(m, tokens=[1, 17])              # {"rms_norm": [Key(shape=(1, 4096), dtype=bfloat16), ...], ...}
    shapes.key_set(tokens=[4096])               # every model's keys, without repeats

The models live in one data file, `kforge/shapes/models.json` (package data), each entry with the
Hugging Face repo id its numbers come from (`source`) and the fields of `Model` under their
config.json names; the file also holds the default token counts (`tokens.decode`, `tokens.prefill`).
`keys.py`'s docstring says which problems each op gets. A leaf: it imports only specs and the
shared leaves, so tools and benchmarks alike read it.
"""
from __future__ import annotations

import functools
from typing import Iterable, Sequence

import torch

from kforge.shapes.keys import BUILTIN_SPECS, Key, check_ops, check_tokens, keys_of, problems_of
from kforge.shapes.keys import gaps as _gaps
from kforge.shapes.models import (DATA_FILE, Mla, Mlp, Model, ModelsFileError, Moe, Norm, Scoring, Table,
                                  UnknownModelError, load, load_bundled)
from kforge.specs import Problem

__all__ = ["BUILTIN_SPECS", "DATA_FILE", "Key", "Mla", "Mlp", "Model", "ModelsFileError", "Moe", "Norm", "Scoring",
           "Table", "UnknownModelError", "default_tokens", "gaps", "key_set", "keys", "load", "model", "models",
           "problems", "table"]


@functools.lru_cache(maxsize=1)
def table() -> Table:
    """The bundled models file, read and checked once per process."""
    return load_bundled()


def models() -> list[Model]:
    """Every model of the bundled file, in its order."""
    return list(table().models)


def model(name: str | Model) -> Model:
    """The model named `name`: its name (`llama-3.1-8b`), its Hugging Face repo id or the id's last
    part, case ignored. Raises UnknownModelError (a KeyError) naming the closest valid names."""
    return table().model(name)


def default_tokens() -> tuple[int, ...]:
    """The file's decode then prefill token counts: (1, 2, 4, ..., 64, 512, ..., 16384)."""
    return table().decode_tokens + table().prefill_tokens


def problems(model: str | Model, tokens: Iterable[int] | None = None,
             ops: Sequence[str] | None = None) -> dict[str, list[Problem]]:
    """Per op, the problems (`spec.problem(args)`: the dispatch key's shape) of `model`'s forward at
    `tokens` (default: `default_tokens()`), of `ops` only when given; ops the model never calls
    are left out. See `kforge.shapes.keys` for each op's rule."""
    m = table().model(model)
    tokens = check_tokens(default_tokens() if tokens is None else tokens)
    return problems_of(m, tokens, check_ops(ops), table().decode_tokens[-1])


def keys(model: str | Model, tokens: Iterable[int] | None = None, ops: Sequence[str] | None = None,
         dtype: torch.dtype = torch.bfloat16) -> dict[str, list[Key]]:
    """Per op, `(shape, dtype)` keys of `model`'s forward at `tokens`: each of `problems(...)` as the
    shape the op's `make_inputs` takes (`spec.shape_for`), all at `dtype` (bf16 unless given)."""
    return keys_of(problems(model, tokens, ops), dtype)


def key_set(models: Iterable[str | Model] | None = None, tokens: Iterable[int] | None = None,
            ops: Sequence[str] | None = None, dtype: torch.dtype = torch.bfloat16) -> dict[str, list[Key]]:
    """`keys` of several models (default: all) merged per op, without repeats, in first-seen order."""
    tokens = None if tokens is None else tuple(tokens)
    merged: dict[str, dict[Key, None]] = {}
    for m in table().models if models is None else models:
        for op, found in keys(m, tokens, ops, dtype).items():
            merged.setdefault(op, {}).update(dict.fromkeys(found))
    return {op: list(found) for op, found in merged.items()}


def gaps(model: str | Model) -> list[str]:
    """The calls of `model`'s forward that `keys` leaves out (an op's make_inputs cannot build them,
    or no kforge op computes them), each with why."""
    return _gaps(table().model(model))
