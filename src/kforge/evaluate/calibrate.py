"""Calibration: prove implementations of an op correct on one problem, time them, and turn the
result into score-table records keyed exactly as the router keys calls.

    from kforge.evaluate.calibrate import calibrate
    records = calibrate(get_spec("rms_norm"), (64, 4096), torch.bfloat16, "cpu")
    ScoreTable().write(records)

For each implementation (a backend name, or an `Implementation` built elsewhere):
  1. Correctness, on the inputs of every seed: the output must match the reference under
     `kforge.testing.compare`, must not alias an input, and the inputs must come back unchanged.
     An implementation that raises or fails any seed gets no record, and a `CalibrationRejected`
     warning says why.
  2. Timing, in one process run for every implementation that passed, interleaved (so results
     compare), by `kforge.evaluate.timing.measure`:
     - CPU ("cpu_wall"): wall time of batches of back-to-back calls, each batch ~`timing.cpu.SAMPLE_S` long,
       the implementations interleaved batch by batch so that drift in the machine's load hits all
       of them alike; p20/p50/p80 over batches. host_us = p50: on a CPU the host is the device.
     - CUDA ("cuda_events"): warm-up, then one event pair around each call with the L2 cache
       flushed before it and a GPU sleep queued ahead of it, so the events see device time and
       not launch overhead; p20/p50/p80 over calls. host_us: `timing.clock.HOST_CALLS` back-to-back calls
       timed on the host, queued behind a GPU sleep, one synchronize after the loop: what the
       host spends per call.
  3. Plausibility (`evaluate.plausible`): a run whose timings show a stall (samples spread 20-fold,
     a built-in 100x its peer or, on CUDA, 100x the roofline floor) is timed again once; if it
     still does, calibrate raises `ImplausibleTiming` naming the op, key and numbers, and no
     record of the key is made.
The key comes from `router.key.call_info` on the seed-0 inputs and the fingerprint of their device,
so CPU timings land only on CPU keys and are never mixed with GPU records.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable, Union

import torch

from kforge.specs import OpSpec
import kforge
from kforge.backends import BackendName, Implementation, get_backend
from kforge.device import fingerprint, installed_version
# Timing, measure, time_cpu and time_cuda are re-exported: calibrate's timing API predates the timing package.
from kforge.evaluate.timing import Timing, measure, time_cpu, time_cuda  # noqa: F401
from kforge.evaluate import plausible
from kforge.evaluate.plausible import ImplausibleTiming  # noqa: F401 - raised by calibrate
from kforge.records import DispatchKey, Domain, Evidence, Record
from kforge.router import misses
from kforge.router.key import call_info
from kforge.testing import compare

Candidate = Union[str, BackendName, Implementation]

DEFAULT_BACKENDS: tuple[Candidate, ...] = (BackendName.VENDOR, BackendName.INDUCTOR)
DEFAULT_SEEDS = (0, 1, 2)


class CalibrationRejected(UserWarning):
    """An implementation failed correctness (or could not be loaded) and got no record."""

    def __init__(self, key: DispatchKey, impl: str, reason: str):
        self.key = key
        self.impl = impl
        self.reason = reason
        super().__init__(f"kforge calibrate: {impl} rejected for {key}: {reason}")


def calibrate(spec: OpSpec, shape, dtype: torch.dtype, device, backends: Iterable[Candidate] = DEFAULT_BACKENDS,
              seeds: Iterable[int] = DEFAULT_SEEDS, *, ceiling_gbps: float | None = None,
              provider: str = "builtin") -> list[Record]:
    """Records for every implementation in `backends` that is correct on `shape`, fastest first.

    spec: the op's `OpSpec`; shape: the primary input's shape, as `spec.make_inputs` takes it
    (e.g. `(rows, hidden)` for rms_norm); dtype: the dtype of the op's floating inputs; device:
    "cpu", "cuda", "cuda:1", ... . backends: backend names (loaded for this key) or ready
    `Implementation`s. ceiling_gbps: the device's memory bandwidth, when known, for
    `ceiling_fraction`. provider: what the records name as their source. Rejected
    implementations are reported with `CalibrationRejected` warnings.
    """
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("calibrate needs at least one seed")
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"calibrate times cpu and cuda devices, got {device}")
    args = spec.make_inputs(tuple(shape), dtype, device, seeds[0])
    key = call_info(spec, args, str(fingerprint(args[spec.tensor_args[0]].device))).key

    # An implementation may be a routed entry point (kforge.ops.<op>): these calls are kforge's
    # own, never a user's misses.
    with misses.uncounted():
        passed = _verified(spec, backends, key, tuple(shape), dtype, device, seeds)
        if not passed:
            return []
        timings = _timed(spec, {impl_id: impl.fn for impl_id, (impl, _) in passed.items()}, args, key, dtype)
    versions = {"torch": torch.__version__, "triton": installed_version("triton") or "none",
                "kforge": kforge.__version__, "device": fingerprint(args[spec.tensor_args[0]].device).name}
    nbytes = spec.bytes_moved(key.shape, dtype)
    records = []
    for impl_id, (impl, worst) in passed.items():
        t = timings[impl_id]
        gbps = nbytes / t.p50_us / 1e3 if t.p50_us > 0 else None  # bytes/us = 1e-3 GB/s
        records.append(Record(
            key=key, impl=impl.id, backend=impl.backend.value,
            p20_us=t.p20_us, p50_us=t.p50_us, p80_us=t.p80_us, host_us=t.host_us, timing=t.kind,
            evidence=Evidence(dtypes=(key.dtypes,), shapes=(key.shape,), seeds=seeds, max_error_ratio=worst),
            domain=impl.domain, gbps=gbps,
            ceiling_fraction=gbps / ceiling_gbps if gbps is not None and ceiling_gbps else None,
            provider=provider, versions=versions,
        ))
    records.sort(key=lambda r: (r.score_us, r.impl))
    return records


def _verified(spec: OpSpec, backends: Iterable[Candidate], key: DispatchKey, shape, dtype, device,
              seeds) -> dict[str, tuple[Implementation, float]]:
    """{impl id: (implementation, worst error ratio)} of the candidates correct on every seed; the
    others are reported with `CalibrationRejected`."""
    passed: dict[str, tuple[Implementation, float]] = {}
    for candidate in backends:
        try:
            impl = _resolve(spec, candidate, key)
        except Exception as exc:
            _reject(key, _name(candidate), f"could not be loaded: {type(exc).__name__}: {exc}", stacklevel=4)
            continue
        if impl.id in passed:
            raise ValueError(f"calibrate: implementation {impl.id!r} given twice")
        worst, why = verify(spec, impl.fn, shape, dtype, device, seeds)
        if why is not None:
            _reject(key, impl.id, why, stacklevel=4)
            continue
        passed[impl.id] = (impl, worst)
    return passed


def _timed(spec: OpSpec, fns: dict[str, Callable], args: tuple, key: DispatchKey, dtype: torch.dtype) -> dict[str, Timing]:
    """`measure(fns, args)`, timed again once when the run looks stalled; ImplausibleTiming if the
    second run does too (see `evaluate.plausible`)."""
    device = args[spec.tensor_args[0]].device
    floor = None
    if device.type == "cuda":
        from kforge.evaluate import roofline

        ceilings = roofline.ceilings(device)
        if ceilings is not None:
            floor = roofline.floor_us(spec.bytes_moved(key.shape, dtype), spec.flops(key.shape, dtype), ceilings)
    timings = measure(fns, args)
    if plausible.check(timings, floor):
        timings = measure(fns, args)
        found = plausible.check(timings, floor)
        if found:
            raise ImplausibleTiming(spec.name, key, found)
    return timings


def verify(spec: OpSpec, fn: Callable, shape, dtype: torch.dtype, device,
           seeds: Iterable[int]) -> tuple[float, str | None]:
    """(worst error/budget ratio over seeds, None) when `fn` is correct on `shape` for every seed;
    (inf, why) at the first failure."""
    worst = 0.0
    for seed in seeds:
        args = spec.make_inputs(shape, dtype, device, seed)
        tensors = [args[i] for i in spec.tensor_args]
        before = [t.clone() for t in tensors]
        oracle, at_dtype = spec.oracle(args), spec.reference(*args)
        try:
            out = fn(*args)
        except Exception as exc:
            return float("inf"), f"seed {seed}: raised {type(exc).__name__}: {exc}"
        outs = out if isinstance(out, (tuple, list)) else (out,)
        inputs_at = {t.untyped_storage().data_ptr() for t in tensors if t.numel()}
        if any(isinstance(o, torch.Tensor) and o.numel() and o.untyped_storage().data_ptr() in inputs_at for o in outs):
            return float("inf"), f"seed {seed}: an output aliases an input"
        if not all(torch.equal(t, b) for t, b in zip(tensors, before)):
            return float("inf"), f"seed {seed}: wrote to its inputs"
        result = compare(spec, args, out, oracle=oracle, at_dtype=at_dtype)
        if not result.ok:
            return float("inf"), f"seed {seed}: {result.message}"
        worst = max(worst, result.worst_ratio)
    return worst, None


def _name(candidate: Candidate) -> str:
    if isinstance(candidate, Implementation):
        return candidate.id
    return candidate.value if isinstance(candidate, BackendName) else str(candidate)


def _resolve(spec: OpSpec, candidate: Candidate, key: DispatchKey) -> Implementation:
    if isinstance(candidate, Implementation):
        return candidate
    backend = get_backend(candidate)
    why = backend.available()
    if why is not None:
        raise RuntimeError(why)
    if not backend.supports(spec, key):
        raise RuntimeError(f"backend {backend.name.value} does not support {key}")
    # The inductor backend keeps one static-shape build per record key: loading through a record of
    # this key measures the very build the router will later load for it, and compiles it once.
    return backend.load(spec, _placeholder(key, backend.name))


def _placeholder(key: DispatchKey, backend: BackendName) -> Record:
    """A record naming only `key` and a built-in backend (its numbers are never written)."""
    return Record(key=key, impl=backend.value, backend=backend.value, p20_us=0.0, p50_us=0.0, p80_us=0.0,
                  host_us=0.0, timing="cpu_wall", domain=Domain(),
                  evidence=Evidence(dtypes=(key.dtypes,), shapes=(key.shape,), seeds=(0,), max_error_ratio=0.0))


def _reject(key: DispatchKey, impl: str, reason: str, stacklevel: int = 3) -> None:
    warnings.warn(CalibrationRejected(key, impl, reason), stacklevel=stacklevel)
