"""The Triton backend: stored, verified kernels, loaded from the kernel store by their sha256.

A record names its kernel by `source_sha256`, and its implementation id is `triton:<sha[:12]>`.
Loading re-hashes the stored file: a kernel edited on disk raises `KernelIntegrityError`, which
the router turns into one warning, the record switched off for the key, and vendor service. The
same for a kernel without a valid verdict of this kforge's evaluator (`UntrustedKernelError`:
planted in the store, or copied from another KFORGE_HOME; the package's bundled kernels are
trusted as shipped), and for one that fails the static check, which is never imported
(`KernelRejectedError`, checked once per sha per process).
A record may not claim more than the kernel's own DOMAIN (it would send calls the kernel was
never written for); loading such a record fails the same way.

Launch path: per router decision, a cached launcher (`backends.launcher`): forward runs as written
for the first two calls (the second recorded), then a replay of the recorded launches through the
compiled kernels' C launchers, once it proved bit-identical to forward. `KFORGE_LAUNCHER=jit`
keeps forward (Triton's JIT launch) on every call.

Runs where Triton can: a CUDA GPU, or CPU tensors under the interpreter (`TRITON_INTERPRET=1`,
set before triton is first imported; correctness only, timings there are not GPU timings).
Importing this module never imports triton; loading a kernel does.
"""
from __future__ import annotations

import importlib.util
import os

from kforge import paths
from kforge.backends.base import Backend, BackendName, Capabilities, Implementation
from kforge.candidate import domain_exceeds
from kforge.errors import KforgeError
from kforge.specs import OpSpec

TRITON_CAPABILITIES = Capabilities(has_backward=False, can_torch_compile=True, cuda_graph_safe=True, any_layout=False)


def interpreter_on() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (how Triton itself reads the variable)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


class UntrustedKernelError(KforgeError):
    """A stored kernel this kforge's evaluator never accepted: not served."""


def impl_id(sha: str) -> str:
    return f"triton:{sha[:12]}"


class TritonBackend(Backend):
    name = BackendName.TRITON
    capabilities = TRITON_CAPABILITIES

    def available(self):
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        if interpreter_on():
            return None
        import torch

        if torch.cuda.is_available():
            return None
        return "no CUDA GPU, and TRITON_INTERPRET is not set (Triton runs CPU tensors only in its interpreter)"

    def supports(self, spec: OpSpec, key):
        return key.device.startswith("cuda|") or (key.device.startswith("cpu|") and interpreter_on())

    def load(self, spec: OpSpec, record):
        # The store sits below the backends; imported here so `import kforge` stays lean.
        from kforge.store import BundledKernels, KernelStore

        if record is None or not record.source_sha256:
            raise ValueError("a triton record must name its kernel by source_sha256")
        sha = record.source_sha256
        if record.impl != impl_id(sha):
            raise ValueError(f"record impl {record.impl!r} does not match its kernel {sha}: expected {impl_id(sha)!r}")
        store = KernelStore()
        bundled = paths.bundled_kernel_dir()
        if bundled is not None and BundledKernels(bundled).holds(sha):
            store = BundledKernels(bundled)  # a kernel shipped with the bundled table: trusted as shipped
        else:
            problem = store.verdict_problem(sha, spec.name, record.key.device)
            if problem is not None:
                raise UntrustedKernelError(f"stored kernel {sha}: {problem}; not serving it")
        candidate = store.load(sha, spec)
        why = domain_exceeds(record.domain, candidate.domain)
        if why is not None:
            raise ValueError(f"record {record.impl} for {record.key} claims more than the kernel's DOMAIN: its domain {why}")
        from kforge.backends.launcher import cached_launcher

        def specialize(args, forward=candidate.forward, module=candidate.module, tensors=spec.tensor_args):
            return cached_launcher(forward, module, args, tensors)

        return Implementation(id=record.impl, backend=BackendName.TRITON, fn=candidate.forward, domain=record.domain,
                              capabilities=TRITON_CAPABILITIES, specialize=specialize)
