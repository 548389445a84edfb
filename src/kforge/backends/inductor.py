"""The inductor backend: torch.compile of the op's reference, a candidate like any other.

Each record (op, problem, dtypes, device) gets its own compiled function (dynamo keys its cache
on the code object, so each gets a fresh copy of the reference's code): the first call compiles
the static-shape build that was measured; nearest-shape calls served by the same record make
dynamo recompile once with dynamic shapes (`dynamic=None`) instead of piling up static builds
until its recompile limit (8) fails the call.
"""
from __future__ import annotations

import functools
import threading
import types

from kforge.backends.base import Backend, BackendName, Capabilities, Implementation
from kforge.records import Domain
from kforge.specs import OpSpec

INDUCTOR_CAPABILITIES = Capabilities(has_backward=False, can_torch_compile=True, cuda_graph_safe=True, any_layout=True)

_lock = threading.Lock()
_compiled: dict = {}


def _fresh_copy(fn):
    """A function with its own code object, hence its own dynamo cache."""
    code = fn.__code__.replace()
    copy = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__
    copy.__kwdefaults__ = fn.__kwdefaults__
    return copy


@functools.cache
def _inductor_unavailable() -> str | None:
    """Why torch.compile cannot run here, or None. Asked once per process, and not at import:
    torch._inductor imports triton."""
    import importlib.util

    if importlib.util.find_spec("torch._inductor") is None:  # pragma: no cover - depends on the build
        return "torch._inductor is not installed"
    return None


class InductorBackend(Backend):
    name = BackendName.INDUCTOR
    capabilities = INDUCTOR_CAPABILITIES

    def available(self):
        return _inductor_unavailable()

    def supports(self, spec: OpSpec, key):
        return self.available() is None

    def load(self, spec: OpSpec, record=None):
        import torch

        slot = (spec.name, None if record is None else (record.key.shape, record.key.dtypes, record.key.device))
        with _lock:
            fn = _compiled.get(slot)
            if fn is None:
                fn = torch.compile(_fresh_copy(spec.reference), fullgraph=True, dynamic=None)
                _compiled[slot] = fn
        return Implementation(id=BackendName.INDUCTOR.value, backend=BackendName.INDUCTOR, fn=fn,
                              domain=Domain() if record is None else record.domain, capabilities=INDUCTOR_CAPABILITIES)
