"""kforge ops: `kforge.ops.<name>(...)` for every registered op, and the spec registry.

Each built-in op's meaning is one module of `kforge.specs` (`kforge/specs/rms_norm.py` holds
`SPEC`); this facade registers each spec with torch.library and the router and binds the routed
entry point under the op's name (so `kforge.ops.rms_norm` is the op, and
`from kforge.specs.rms_norm import SPEC` is its spec). Adding a built-in op: its spec module, and
one line below.
"""
from __future__ import annotations

from typing import Callable

from kforge.errors import UnknownNameError
from kforge.ops.registry import ENTRIES, SPECS, is_builtin, register
from kforge.specs import OpSpec
from kforge.specs import cross_entropy as _cross_entropy
from kforge.specs import fused_add_rms_norm as _fused_add_rms_norm
from kforge.specs import fused_moe as _fused_moe
from kforge.specs import gemv as _gemv
from kforge.specs import layer_norm as _layer_norm
from kforge.specs import rms_norm as _rms_norm
from kforge.specs import rotary_embedding as _rotary_embedding
from kforge.specs import silu_and_mul as _silu_and_mul
from kforge.specs import softmax as _softmax
from kforge.specs import topk_softmax as _topk_softmax

# Registered in this order (the order `SPECS` lists them in: tables, reports and the CLI follow it).
rms_norm = register(_rms_norm.SPEC, builtin=True)
fused_add_rms_norm = register(_fused_add_rms_norm.SPEC, builtin=True)
softmax = register(_softmax.SPEC, builtin=True)
silu_and_mul = register(_silu_and_mul.SPEC, builtin=True)
topk_softmax = register(_topk_softmax.SPEC, builtin=True)
cross_entropy = register(_cross_entropy.SPEC, builtin=True)
layer_norm = register(_layer_norm.SPEC, builtin=True)
rotary_embedding = register(_rotary_embedding.SPEC, builtin=True)
gemv = register(_gemv.SPEC, builtin=True)
fused_moe = register(_fused_moe.SPEC, builtin=True)


def get_spec(name: str, trust=None) -> OpSpec:
    """The spec of a registered op, or of a user op persisted under KFORGE_HOME (loaded now, its
    code run as `trust` allows: `kforge.userops.untrusted.Trust`, this process's own by default)."""
    spec = SPECS.get(name)
    if spec is not None:
        return spec
    from kforge.userops import load, persist  # the wing sits above this facade: imported on demand

    if name in persist.persisted():
        load.load(name, trust)
        return SPECS[name]
    raise UnknownNameError("op", name, list(SPECS) + persist.persisted())


def __getattr__(name: str) -> Callable:
    """`kforge.ops.<name>` of a user op: registered in this process, or persisted under KFORGE_HOME
    (loaded on first use)."""
    entry = ENTRIES.get(name)
    if entry is not None:
        return entry
    if not name.startswith("_"):
        from kforge.userops import load, persist

        if name in persist.persisted():
            return load.load(name)
    raise AttributeError(f"module 'kforge.ops' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(ENTRIES))  # user ops registered here are attributes too


__all__ = ["ENTRIES", "SPECS", "OpSpec", "get_spec", "is_builtin", "register", "rms_norm", "fused_add_rms_norm",
           "softmax", "silu_and_mul", "topk_softmax", "cross_entropy", "layer_norm", "rotary_embedding", "gemv",
           "fused_moe"]
