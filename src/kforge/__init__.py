"""kforge: PyTorch-integrated runtime dispatch for GPU kernels.

    import kforge
    y = kforge.ops.rms_norm(x, weight, 1e-6)

Every call is routed by (op, device, dtypes, shape) to the fastest verified implementation the
score table knows, and served by the vendor (PyTorch) implementation on a miss. Importing kforge
reads no table, initialises no CUDA and imports no LLM SDK.
"""
from __future__ import annotations

from kforge import ops
from kforge.errors import KforgeError, KforgeInputError, KforgePinError, UnknownNameError
from kforge.router import pins as _pins
from kforge.router.dispatch import ROUTER as _ROUTER
from kforge.userops import define as _define
from kforge.version import __version__


def define_op(name: str, schema: str, reference, make_inputs, *, shapes, **options):
    """Register an op from a PyTorch reference: routed, logged and generated for like a built-in
    one, and persisted so other processes load it by name (`kforge.userops`)."""
    return _define.define_op(name, schema, reference, make_inputs, shapes=shapes, **options)


def op(schema: str, make_inputs, *, shapes, name: str | None = None, **options):
    """Decorator form of `define_op`: the decorated function is the reference."""
    return _define.op(schema, make_inputs, shapes=shapes, name=name, **options)


def use(op: str, impl: str):
    """Context manager: calls of `op` inside the block go to `impl` ("vendor", "inductor",
    "triton:<id>") or raise `KforgePinError`; never a silent fallback. `op` may be a user op
    persisted under KFORGE_HOME (loaded now); an unknown name raises, listing the known ones."""
    ops.get_spec(op)
    return _pins.use(op, impl)


def stats() -> dict:
    """Calls in this process per op: hits, misses, fallbacks, pinned and empty, by implementation."""
    return _ROUTER.stats()


def flush() -> list:
    """Write the miss counts gathered so far to the miss log now (also done at exit)."""
    return _ROUTER.flush()


def explain(model, *example_inputs, **kwargs):
    """What `torch.compile(model, backend="kforge")` rewrites in `model` for these inputs, where,
    and why other candidate patterns were left alone (`kforge.compile.explain`)."""
    from kforge.compile.explain import explain as _explain

    return _explain(model, *example_inputs, **kwargs)


def reset() -> None:
    """Forget routing decisions and cached table reads; re-read KFORGE_HOME/KFORGE_TABLE/KFORGE_PIN."""
    from kforge.router.dispatch import reset as _reset

    _reset()


__all__ = ["ops", "define_op", "op", "use", "stats", "flush", "explain", "reset", "KforgeError", "KforgeInputError",
           "KforgePinError", "UnknownNameError", "__version__"]
