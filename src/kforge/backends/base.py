"""The backend interface: where implementations of an op come from.

A backend turns a score-table record (or, for built-in backends, nothing but the op) into an
`Implementation`: a callable with the op's signature plus the domain and capabilities the router
reads as data. Backends never decide; `router.policy` does.
"""
from __future__ import annotations

import abc
import dataclasses
import enum
from typing import Any, Callable

from kforge.records import DispatchKey, Domain, Record
from kforge.specs import OpSpec


class BackendName(str, enum.Enum):
    VENDOR = "vendor"  # the op's PyTorch implementation (ATen, cuBLAS)
    INDUCTOR = "inductor"  # torch.compile of the op's reference
    TRITON = "triton"  # stored, verified Triton kernels (kforge.store)


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What an implementation can do, read by the router instead of trying and catching."""

    has_backward: bool = False  # differentiable through autograd
    can_torch_compile: bool = True  # may be called from inside a torch.compile graph
    cuda_graph_safe: bool = True  # no host sync, no host reads of device data
    any_layout: bool = False  # accepts every stride pattern the op accepts


@dataclasses.dataclass(frozen=True)
class Implementation:
    id: str  # "vendor", "inductor", "triton:<sha prefix>"
    backend: BackendName
    fn: Callable[..., Any]
    domain: Domain
    capabilities: Capabilities
    # Per router decision: given the first call's arguments, a callable for every call with the same
    # signature (the Triton backend's cached launcher). None: `fn` serves every call.
    specialize: Callable[[tuple], Callable[..., Any]] | None = None

    def for_call(self, args: tuple) -> Callable[..., Any]:
        return self.fn if self.specialize is None else self.specialize(args)


class Backend(abc.ABC):
    name: BackendName
    capabilities: Capabilities

    @abc.abstractmethod
    def available(self) -> str | None:
        """None when this backend can run in this process, else why not (shown by `kforge doctor`)."""

    @abc.abstractmethod
    def supports(self, spec: OpSpec, key: DispatchKey) -> bool:
        """Whether this backend can build an implementation for `key` at all."""

    @abc.abstractmethod
    def load(self, spec: OpSpec, record: Record | None) -> Implementation:
        """The implementation a record names (built-in backends accept None: their default)."""
