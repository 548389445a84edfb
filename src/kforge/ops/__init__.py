"""kforge ops: `kforge.ops.<name>(...)` for every registered op, and the spec registry.

Each op's meaning is one module here (`rms_norm.py` holds `SPEC`); this package namespace wires
each spec to torch.library and the router, and binds the routed entry point under the op's name
(so `kforge.ops.rms_norm` is the op, and `from kforge.ops.rms_norm import SPEC` is its spec).
Adding a built-in op: a module with its `SPEC`, plus its name in `_BUILTIN` below.
"""
from __future__ import annotations

import importlib

from kforge.errors import UnknownNameError
from kforge.ops.spec import OpSpec
from kforge.router.entry import register_op

# Module names under kforge.ops, each holding one `SPEC`; registered in this order.
_BUILTIN = (
    "rms_norm",
    "fused_add_rms_norm",
    "softmax",
    "silu_and_mul",
    "topk_softmax",
    "cross_entropy",
    "layer_norm",
    "rotary_embedding",
    "gemv",
)

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


for _module in _BUILTIN:
    register(importlib.import_module(f"kforge.ops.{_module}").SPEC)
    # `kforge.ops.<name>` is the op's entry point (the import bound the submodule there first).
    globals()[_module] = ENTRIES[_module]

__all__ = ["SPECS", "OpSpec", "get_spec", "register", *_BUILTIN]
