"""The vendor backend: the op's own PyTorch implementation. Serves every valid call."""
from __future__ import annotations

import functools

from kforge.backends.base import Backend, BackendName, Capabilities, Implementation
from kforge.records import Domain
from kforge.specs import OpSpec

VENDOR_CAPABILITIES = Capabilities(has_backward=True, can_torch_compile=True, cuda_graph_safe=True, any_layout=True)


class VendorBackend(Backend):
    name = BackendName.VENDOR
    capabilities = VENDOR_CAPABILITIES

    def available(self):
        return None

    def supports(self, spec: OpSpec, key):
        return True

    def load(self, spec: OpSpec, record=None):
        return vendor_implementation(spec)


@functools.lru_cache(maxsize=None)
def vendor_implementation(spec: OpSpec) -> Implementation:
    return Implementation(id=BackendName.VENDOR.value, backend=BackendName.VENDOR, fn=spec.vendor,
                          domain=Domain(), capabilities=VENDOR_CAPABILITIES)
