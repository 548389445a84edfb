"""The shapes kforge is tuned and benchmarked at: popular open models' dimensions.

    from kforge import shapes
    m = shapes.model("llama-3.1-8b")            # or its Hugging Face id, "meta-llama/Llama-3.1-8B"

The models live in one data file, `kforge/shapes/models.json` (package data), each entry with the
Hugging Face repo id its numbers come from (`source`) and the fields of `Model` under their
config.json names; the file also holds the default token counts (`tokens.decode`, `tokens.prefill`).
A leaf: it imports only the shared leaves, so tools and benchmarks alike read it.
"""
from __future__ import annotations

import functools

from kforge.shapes.models import (DATA_FILE, Mla, Mlp, Model, ModelsFileError, Moe, Norm, Scoring, Table,
                                  UnknownModelError, load, load_bundled)

__all__ = ["DATA_FILE", "Mla", "Mlp", "Model", "ModelsFileError", "Moe", "Norm", "Scoring", "Table",
           "UnknownModelError", "default_tokens", "load", "model", "models", "table"]


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
