"""Test helpers: valid score-table records, and a stand-in Triton backend that runs on a CPU.

The stand-in takes the TRITON slot of `kforge.backends.BACKENDS` (see the `fake_triton` fixture in
conftest.py), so records naming backend "triton" route to plain Python functions without compiling
anything. What an implementation does is read from its id:
    triton:test-ok*     the op's reference (correct values)
    triton:test-wrong*  the reference plus one (visibly wrong values: it must never be chosen)
    triton:test-raise*  raises RuntimeError at call time
Each instance counts the calls of every implementation it loaded, so a test can see what served.
"""
from __future__ import annotations

import collections

import torch

from kforge.backends import Backend, BackendName, Capabilities, Implementation
from kforge.device import fingerprint
from kforge.records import DispatchKey, Domain, Evidence, Record


def cpu_device() -> str:
    """The fingerprint string of this machine's CPU, as the router keys records for CPU calls."""
    return str(fingerprint("cpu"))


def dtype_sig(op: str, dtype: torch.dtype = torch.float32) -> str:
    """The dtype signature of a call of a built-in op whose tensors all have `dtype`."""
    from kforge.ops import SPECS

    n = len(SPECS[op].tensor_args)
    return ",".join([str(dtype).removeprefix("torch.")] * n)


def make_record(op: str = "rms_norm", problem=(8, 64), *, impl: str = "triton:test-ok", backend: str | None = None,
                p50: float = 1.0, host: float = 0.0, dtype: torch.dtype = torch.float32, dtypes: str | None = None,
                device: str | None = None, domain: Domain | None = None, evidence: Evidence | None = None,
                attempt_id: str | None = None) -> Record:
    """A valid record for `op` at `problem` on this CPU whose evidence covers exactly its key."""
    dtypes = dtypes or dtype_sig(op, dtype)
    key = DispatchKey(op, device or cpu_device(), dtypes, tuple(problem))
    if backend is None:
        backend = impl.split(":", 1)[0]
    if evidence is None:
        evidence = Evidence(dtypes=(dtypes,), shapes=(tuple(problem),), seeds=(0, 1), max_error_ratio=0.5)
    return Record(key=key, impl=impl, backend=backend, p20_us=p50 * 0.9, p50_us=p50, p80_us=p50 * 1.1,
                  host_us=host, timing="cpu_wall", evidence=evidence, domain=domain or Domain(),
                  attempt_id=attempt_id)


def _plus_one(out):
    return tuple(o + 1 for o in out) if isinstance(out, tuple) else out + 1


class FakeTritonBackend(Backend):
    """Stands in for the Triton backend on a CPU; see the module docstring."""

    name = BackendName.TRITON
    capabilities = Capabilities()

    def __init__(self) -> None:
        self.calls: collections.Counter = collections.Counter()  # impl id -> calls
        self.loads: collections.Counter = collections.Counter()  # impl id -> loads

    def available(self):
        return None

    def supports(self, spec, key):
        return True

    def load(self, spec, record):
        impl = record.impl
        self.loads[impl] += 1
        kind = impl.split(":", 1)[1]
        calls = self.calls

        if kind.startswith("test-ok"):
            def fn(*args):
                calls[impl] += 1
                return spec.reference(*args)
        elif kind.startswith("test-wrong"):
            def fn(*args):
                calls[impl] += 1
                return _plus_one(spec.reference(*args))
        elif kind.startswith("test-raise"):
            def fn(*args):
                calls[impl] += 1
                raise RuntimeError(f"{impl}: simulated launch failure")
        else:
            raise ValueError(f"fake triton backend cannot build {impl!r}")
        return Implementation(id=impl, backend=BackendName.TRITON, fn=fn, domain=record.domain,
                              capabilities=self.capabilities)


def write_user_table(*records: Record) -> None:
    """Write `records` into the user table (as another process would) and make the running router
    look for table changes on its next call instead of waiting up to CHECK_INTERVAL_S."""
    from kforge.router import dispatch
    from kforge.router.table import ScoreTable

    ScoreTable().write(records)
    dispatch.ROUTER.next_check = 0.0


class LaunchRecorder:
    """Stands in for a Triton kernel object: records each launch's grid and keyword arguments
    (the constexprs), then launches. Seed tests set it on a loaded candidate's module to check
    which path forced tunables took."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.launches = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((grid, kwargs))
            return self.kernel[grid](*args, **kwargs)

        return launch


def load_with_tunables(source: str, spec, changes: dict, kernel_name: str):
    """A seed's source with its tunables set to `changes` (each `NAME = literal` line rewritten),
    stored and loaded as a candidate of `spec`, its kernel `kernel_name` wrapped in a
    `LaunchRecorder`. Returns (candidate, recorder)."""
    from kforge.store import KernelStore

    for name, value in changes.items():
        line = next(line for line in source.splitlines() if line.startswith(f"{name} = "))
        source = source.replace(line + "\n", f"{name} = {value!r}\n", 1)
    stored = KernelStore().put(source, op=spec.name, provider="user")
    candidate = KernelStore().load(stored.sha256, spec)
    recorder = LaunchRecorder(getattr(candidate.module, kernel_name))
    setattr(candidate.module, kernel_name, recorder)
    return candidate, recorder


_op_names = __import__("itertools").count()


def unique_op_name(stem: str) -> str:
    """Op names are process-wide (torch.library) and tests of several modules define user ops in
    one worker process: one counter for all of them."""
    import os

    return f"{stem}_{os.getpid()}_{next(_op_names)}"


def fake_openai(httpserver, monkeypatch, *answers: str):
    """A real OpenAI provider against a loopback server that gives `answers` in order (chat
    completions); returns the provider."""
    from kforge.gen.config import load_config
    from kforge.gen.providers import make_provider

    for text in answers:
        httpserver.expect_ordered_request("/v1/chat/completions", method="POST").respond_with_json(
            {"id": "c", "object": "chat.completion", "created": 0, "model": "gpt-4.1",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}})
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    return make_provider(load_config(provider="openai", base_url=httpserver.url_for("/v1").rstrip("/"),
                                     max_retries="0"))


def accept_kernel(sha: str, op: str, device: str | None = None) -> None:
    """Give stored kernel `sha` the verdict the harness writes when it accepts a candidate for
    `op` on `device` (default: this machine's GPU when there is one, else its CPU), so the real
    Triton backend will serve its records there (tests that plant a kernel and a record)."""
    import torch

    from kforge.store import KernelStore

    device = device or str(fingerprint("cuda" if torch.cuda.is_available() else "cpu"))
    KernelStore().put_verdict(sha, op, device, {"provider": "test", "attempt_id": None, "evidence": None})


def _fill(t: torch.Tensor):
    """What the gaps of a relaid-out tensor hold: NaN, or the largest value of an integer dtype."""
    return float("nan") if t.is_floating_point() else torch.iinfo(t.dtype).max


def relayout(layout: str, t: torch.Tensor) -> torch.Tensor:
    """A view of `t`'s values (for `expanded`, of its first row) in `layout`. Memory that the view
    skips holds NaN, so an implementation that reads it shows. 1-D tensors (weights) only take
    the layouts that make sense for a vector."""
    if layout == "misaligned":  # storage offset of one element: 2-byte aligned for bf16
        buf = torch.full((t.numel() + 1,), _fill(t), dtype=t.dtype, device=t.device)
        buf[1:] = t.reshape(-1)
        return buf[1:].view(t.shape)
    if layout == "strided_last_dim":
        return torch.stack([t, torch.full_like(t, _fill(t))], dim=-1)[..., 0]  # last-dim stride 2
    if t.dim() < 2:
        return t
    if layout == "sliced_rows":
        return torch.stack([t, torch.full_like(t, _fill(t))], dim=-2).flatten(-3, -2)[..., ::2, :]  # row stride 2*hidden
    if layout == "expanded":
        return t[..., :1, :].expand(t.shape)  # row stride 0
    if layout == "transposed":
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)  # last-dim stride = rows
    raise ValueError(layout)
