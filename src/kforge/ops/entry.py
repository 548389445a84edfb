"""Public entry points of kforge ops: `kforge.ops.<name>` and `torch.ops.kforge.<name>`.

Eager calls of `kforge.ops.<name>` on plain tensors go straight to the router, bypassing the
torch dispatcher (on an H100 the dispatcher wrapper cost 27 us per call against 20 us for a dict
lookup and a Triton launch: shared/BASELINES.md). Under torch.compile, with tensor subclasses
(FakeTensor, FunctionalTensor, DTensor) or with a dispatch mode active (make_fx, FlopCounterMode),
the registered op is called instead, so graphs and modes see `kforge::<name>`.
"""
from __future__ import annotations

from kforge.ops import library
from kforge.router.dispatch import ROUTER, OpRouter
from kforge.specs import OpSpec


def register_op(spec: OpSpec):
    """Register `spec` with torch.library and the router; returns its eager entry point."""
    if spec.name in ROUTER.ops:
        raise ValueError(f"kforge op {spec.name!r} is already registered")
    route = OpRouter(ROUTER, spec)
    n_args = len(spec.arg_names)

    def kernel(*args, **kwargs):
        # The dispatcher hands Python kernels the arguments as the caller wrote them.
        if kwargs or len(args) != n_args:
            args = spec.bind(args, kwargs)
        return route(args)

    overload = library.register(spec, kernel)
    compiled = library.register_compiled(spec, route.call_compiled)
    ROUTER.ops[spec.name] = route
    entry = _make_entry(spec, route, overload)
    entry.compiled = compiled
    return entry


def _make_entry(spec: OpSpec, router: OpRouter, overload):
    entry = router.eager_entry(spec.bind, overload)  # the hot path, written out in the router
    entry.__name__ = entry.__qualname__ = spec.name
    entry.__module__ = "kforge.ops"
    entry.__doc__ = f"kforge.ops.{spec.schema}\n\n{spec.description}.\n\nRouted per call; see `kforge table`."
    entry.spec = spec
    entry.overload = overload
    return entry
