"""The embedded kernel catalog: seed kernels shipped with kforge, one candidate file each.

Each file here follows the candidate contract (`kforge.candidate`): `forward` with its op's
signature, the `@triton.jit` kernels it launches, a `DOMAIN`, and its tunables as module-level
constants, each one `NAME = literal` line, listed with their choices in a module-level
`SEARCH_SPACE = {"NAME": [value, ...]}` literal: what the catalog provider
(`kforge.gen.providers.catalog`) may rewrite. A shipped value should be written as `repr` writes
it, so that a mutant set back to it is the shipped file byte for byte. They are data, not modules
of kforge: nothing imports them; they are loaded by path, stored, evaluated and routed like any
generated kernel.
"""
from __future__ import annotations

from pathlib import Path

CATALOG_DIR = Path(__file__).resolve().parent

# op -> seed files, best general-purpose first.
SEEDS: dict[str, tuple[str, ...]] = {
    "rms_norm": ("rms_norm_rowwise.py",),
    "fused_add_rms_norm": ("fused_add_rms_norm_rowwise.py",),
    "softmax": ("softmax_rowwise.py", "softmax_online.py", "softmax_split.py"),
    "silu_and_mul": ("silu_and_mul_tiled.py", "silu_and_mul_persistent.py"),
    "topk_softmax": ("topk_softmax_rowwise.py",),
    "cross_entropy": ("cross_entropy_online.py", "cross_entropy_split.py"),
    "layer_norm": ("layer_norm_rowwise.py", "layer_norm_looped.py"),
    "gemv": ("gemv_rowblock.py", "gemv_splitk.py"),
    "rotary_embedding": ("rotary_embedding_tiled.py",),
}


def seeds(op: str) -> list[Path]:
    """The seed kernel files for `op` (empty for an op the catalog has none for, e.g. a user's)."""
    return [CATALOG_DIR / name for name in SEEDS.get(op, ())]


def all_seeds() -> dict[str, list[Path]]:
    return {op: seeds(op) for op in SEEDS}
