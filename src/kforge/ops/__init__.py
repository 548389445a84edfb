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
    globals()[spec.name] = entry  # `kforge.ops.<name>` (for a built-in, replacing its submodule)
    return entry


def is_builtin(name: str) -> bool:
    return name in _BUILTIN


def get_spec(name: str) -> OpSpec:
    """The spec of a registered op, or of a user op persisted under KFORGE_HOME (loaded now)."""
    spec = SPECS.get(name)
    if spec is not None:
        return spec
    user = importlib.import_module("kforge.ops.user")

    if name in user.persisted():
        user.load(name)
        return SPECS[name]
    raise UnknownNameError("op", name, list(SPECS) + user.persisted())


def __getattr__(name: str):
    """`kforge.ops.<name>` of a user op persisted under KFORGE_HOME loads it on first use."""
    if not name.startswith("_") and name != "user":
        user = importlib.import_module("kforge.ops.user")  # not `from kforge.ops import`: that calls here
        if name in user.persisted():
            return user.load(name)
    raise AttributeError(f"module 'kforge.ops' has no attribute {name!r}")


for _module in _BUILTIN:
    register(importlib.import_module(f"kforge.ops.{_module}").SPEC)

__all__ = ["SPECS", "OpSpec", "get_spec", "is_builtin", "register", *_BUILTIN]
