"""Backends: where implementations come from. A plain dict keyed by `BackendName`.

Records naming a backend this kforge lacks are kept in the table and skipped by the router.
"""
from __future__ import annotations

from kforge.backends.base import Backend, BackendName, Capabilities, Implementation
from kforge.backends.inductor import InductorBackend
from kforge.backends.triton import TritonBackend
from kforge.backends.vendor import VendorBackend, vendor_implementation
from kforge.errors import UnknownNameError

BACKENDS: dict[BackendName, Backend] = {
    BackendName.VENDOR: VendorBackend(),
    BackendName.INDUCTOR: InductorBackend(),
    BackendName.TRITON: TritonBackend(),
}


def get_backend(name: str | BackendName) -> Backend:
    try:
        return BACKENDS[BackendName(name)]
    except ValueError:
        raise UnknownNameError("backend", str(name), [b.value for b in BACKENDS]) from None
    except KeyError:
        raise UnknownNameError("backend", str(name), [b.value for b in BACKENDS]) from None


__all__ = ["BACKENDS", "Backend", "BackendName", "Capabilities", "Implementation", "get_backend",
           "vendor_implementation"]
