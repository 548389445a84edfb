"""The registry of ops in this process: name -> spec and name -> eager entry point.

Below the `kforge.ops` facade so that the user-op wing (`kforge.userops`) registers its ops here
without importing the facade, which loads persisted user ops lazily through that wing.
"""
from __future__ import annotations

from typing import Callable

from kforge.ops.entry import register_op
from kforge.specs import OpSpec

SPECS: dict[str, OpSpec] = {}
ENTRIES: dict[str, Callable] = {}
_BUILTIN: set[str] = set()


def register(spec: OpSpec, *, builtin: bool = False) -> Callable:
    """Register an op spec: torch.library op `kforge::<name>`, router, and entry point (returned;
    `kforge.ops.<name>` finds it)."""
    entry = register_op(spec)  # raises if the name is taken
    SPECS[spec.name] = spec
    ENTRIES[spec.name] = entry
    if builtin:
        _BUILTIN.add(spec.name)
    return entry


def is_builtin(name: str) -> bool:
    return name in _BUILTIN
