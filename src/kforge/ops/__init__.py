"""kforge ops: `kforge.ops.<name>(...)` for every registered op, and the spec registry.

Each op's meaning is one module here (`rms_norm.py` holds `SPEC`); this package namespace wires
each spec to torch.library and the router, and binds the routed entry point under the op's name
(so `kforge.ops.rms_norm` is the op, and `from kforge.ops.rms_norm import SPEC` is its spec).
Adding a built-in op: a module with its `SPEC`, plus one line in `_BUILTIN` below.
"""
from __future__ import annotations

from kforge.errors import UnknownNameError
from kforge.ops import fused_add_rms_norm as _fused_add_rms_norm_spec
from kforge.ops import rms_norm as _rms_norm_spec
from kforge.ops import softmax as _softmax_spec
from kforge.ops.spec import OpSpec
from kforge.router.entry import register_op

_BUILTIN = (_rms_norm_spec.SPEC, _fused_add_rms_norm_spec.SPEC, _softmax_spec.SPEC)

SPECS: dict[str, OpSpec] = {}
ENTRIES: dict = {}


def register(spec: OpSpec):
    """Register an op spec: torch.library op `kforge::<name>`, router, and entry point."""
    entry = register_op(spec)  # raises if the name is taken
    SPECS[spec.name] = spec
    ENTRIES[spec.name] = entry
    return entry


def get_spec(name: str) -> OpSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise UnknownNameError("op", name, SPECS) from None


for _spec in _BUILTIN:
    register(_spec)

rms_norm = ENTRIES["rms_norm"]
fused_add_rms_norm = ENTRIES["fused_add_rms_norm"]
softmax = ENTRIES["softmax"]

__all__ = ["SPECS", "OpSpec", "get_spec", "register", "rms_norm", "fused_add_rms_norm", "softmax"]
