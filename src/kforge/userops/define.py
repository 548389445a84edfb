"""User-defined ops: `kforge.define_op` and the `@kforge.op` decorator.

    def reference(x, scale: float):            # in a .py file: the definition is persisted
        return torch.relu(x) * scale

    def make_inputs(shape, dtype, device, seed):
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(shape, generator=g).to(device, dtype), 0.5)

    scaled_relu = kforge.define_op("scaled_relu", "(Tensor x, float scale) -> Tensor", reference,
                                   make_inputs, shapes=[(4096, 4096)])
    y = scaled_relu(x, 0.5)                     # also kforge.ops.scaled_relu, torch.ops.kforge.scaled_relu

What a user op is made of: `kforge.userops.build`; where it is persisted and how another process
loads it by name: `kforge.userops.persist` and `kforge.userops.load`. Loading runs the defining
file's code: it is the user's own code, trusted as their environment is. A file from an untrusted
source (an issue) must only ever be loaded inside the sandboxed worker (`kforge.userops.untrusted`).
A KernelBench-style file defines an op too: `kforge.userops.kernelbench`.
"""
from __future__ import annotations

import threading
from typing import Callable, Sequence

from kforge.ops.registry import ENTRIES, SPECS, is_builtin, register
from kforge.userops import persist as on_disk  # `persist` is define_op's keyword
from kforge.userops.build import UserOpError, build_spec

LOCK = threading.RLock()  # held while an op is registered and persisted, by every module of the wing
LOADING: set[str] = set()  # persisted ops whose file `load` is running (it may define itself)


def define_op(name: str, schema: str, reference: Callable, make_inputs: Callable, *, shapes: Sequence,
              persist: bool = True, replace: bool = False, **options):
    """Register a user op; returns its entry point (also `kforge.ops.<name>`). `options`: see
    `build_spec`. With `persist`, the definition is saved so other processes load it by name:
    reference and make_inputs must then be module-level functions of one .py file (which may
    itself call define_op: loading it elsewhere registers the op once). A name persisted before is
    defined again with the same definition (schema, options, the functions' code and what they
    use) is the same op: nothing is rewritten, so a script that defines an op runs again as it
    did. Another definition under that name is refused, saying what differs, unless `replace`."""
    with LOCK:
        if is_builtin(name):
            raise UserOpError(f"op {name!r} is already registered (a built-in op): choose another name")
        if LOADING:
            persist = False  # `load` is running a persisted op's file: register what it defines, rewrite nothing
        spec = build_spec(name, schema, reference, make_inputs, shapes=shapes, **options)
        manifest = on_disk.function_manifest(spec, reference, make_inputs, options) if persist else None
        known = manifest is not None and not replace and name in on_disk.persisted()
        differs = on_disk.differences(name, manifest) if known else []
        if name in SPECS and (not known or differs):
            raise UserOpError(f"op {name!r} is already registered in this process" + (
                f" with another definition ({', '.join(differs)})" if differs else "") +
                ": choose another name" + (", or pass replace=True in a new process" if differs else ""))
        if differs:
            raise UserOpError(f"op {name!r} is already persisted under {on_disk.ops_dir() / name} with another "
                              f"definition ({', '.join(differs)}): pass replace=True to overwrite it, or choose "
                              "another name")
        if name in SPECS:
            return ENTRIES[name]  # the same definition, already registered here
        entry = register(spec)
        if known:
            return entry  # the same definition as the persisted one: nothing to write
        if manifest is not None:
            on_disk.write(name, manifest)
        return entry


def op(schema: str, make_inputs: Callable, *, shapes: Sequence, name: str | None = None, **options):
    """Decorator form of `define_op`: the decorated function is the reference; the op's name is
    the function's unless given. Returns the op's entry point."""

    def wrap(reference: Callable):
        entry = define_op(name or reference.__name__, schema, reference, make_inputs, shapes=shapes, **options)
        entry.__wrapped__ = reference  # the file's attribute is the entry point; `load` finds the function here
        return entry

    return wrap
