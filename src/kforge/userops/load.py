"""Loading a persisted user op by name into this process (`kforge.ops.get_spec` and
`kforge.ops.<name>` call `load` on first use).

Whether the op's code runs here is the caller's `Trust` (`kforge.userops.untrusted`), passed in,
never a process-wide setting: an op from an untrusted source runs its code only in a sandboxed
worker; elsewhere its spec's code refuses.
"""
from __future__ import annotations

from typing import Callable

from kforge.ops.registry import ENTRIES, SPECS, register
from kforge.userops import persist
from kforge.userops.build import DTYPE_NAMES, OpKind, UntrustedCodeError, UserOpError, build_spec, module_from
from kforge.userops.define import LOADING, LOCK
from kforge.userops.kernelbench import kernelbench_spec
from kforge.userops.untrusted import Trust, in_sandbox, stub_spec


def _function(module, attr: str) -> Callable:
    fn = getattr(module, attr)
    return getattr(fn, "__wrapped__", fn)


def load(name: str, trust: Trust | None = None) -> Callable:
    """Register the persisted op `name` in this process; returns its entry point. `trust`: which
    code may run here (None: `Trust.here()`, this process's own)."""
    trust = Trust.here() if trust is None else trust
    if trust is Trust.SANDBOX and not in_sandbox():
        raise UntrustedCodeError(f"op {name!r}: Trust.SANDBOX outside a sandboxed worker")
    with LOCK:
        if name in SPECS:
            return ENTRIES[name]
        manifest = persist.read_manifest(name)
        folder = persist.ops_dir() / name
        trusted = manifest.get("trusted") is True
        if not (trust is Trust.SANDBOX or (trust is Trust.OWN and trusted)):
            if not trusted:
                return register(stub_spec(name, manifest, (folder / "source.py").read_text()))
            raise UserOpError(f"op {name!r}: this process runs no user-op code (an issue runner); load it elsewhere")
        LOADING.add(name)
        try:
            module = module_from(name, folder / "source.py")
        finally:
            LOADING.discard(name)
        if name in SPECS:  # the file defines the op itself (define_op / @kforge.op at its top level)
            return ENTRIES[name]
        scale = manifest.get("tolerance_scale", 1.0)
        if persist.kind_of(manifest) is OpKind.KERNELBENCH:
            spec = kernelbench_spec(name, module, (folder / "source.py").read_text(), scale)
        else:
            spec = build_spec(name, manifest["schema"], _function(module, manifest.get("reference", "reference")),
                              _function(module, manifest.get("make_inputs", "make_inputs")), shapes=manifest["shapes"],
                              dtypes=[DTYPE_NAMES[d] for d in manifest["dtypes"]],
                              problem_dims=manifest["problem_dims"], exact_dims=manifest["exact_dims"],
                              description=manifest.get("description", ""),
                              fixed_shapes=manifest.get("fixed_shapes", False), tolerance_scale=scale)
        return register(spec)
