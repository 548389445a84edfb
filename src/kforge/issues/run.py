"""`kforge issue run`: a validated kernel request -> generation -> a markdown report (and a plot).

The request's op is an existing one, or a new one whose reference code (from the issue: untrusted)
is built in a sandboxed worker (`issues.newop`). Generation is `kforge generate`'s search at the
request's shapes and dtypes. The report gives per key the time before the run (what the table
served), vendor's time in the same run, torch.compile's (the table's Inductor record, or timed now
for a built-in op), the accepted kernel's time and its speedups, the fraction of the device's
roofline it reaches, and where it came from (provider, attempt, source hash); `issues.report` writes it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from kforge.device import fingerprint
from kforge.issues.report import Outcome, Row, markdown, on_target, plot, where_ran
from kforge.issues.request import KernelRequest
from kforge.ops import get_spec, is_builtin
from kforge.router.table import ScoreTable
from kforge.specs import OpSpec
from kforge.userops import load, persist
from kforge.userops.build import OpKind
from kforge.userops.kernelbench import kernelbench_problems
from kforge.userops.untrusted import Trust


def ensure_op(request: KernelRequest) -> str:
    """The request's op registered here: an existing one, or the new one built in the sandbox.
    This process handles an untrusted request: no user-op code runs in it (`Trust.NO_CODE`)."""
    if not request.new_op:
        get_spec(request.op, Trust.NO_CODE)
        return request.op
    if request.op in persist.persisted():
        load.load(request.op, Trust.NO_CODE)
        return request.op
    from kforge.issues.newop import define_untrusted

    kind = OpKind.KERNELBENCH if not kernelbench_problems(request.reference or "") else OpKind.FUNCTION
    define_untrusted(request.op, kind, request.reference or "", request.shapes, request.dtypes,
                     tolerance_scale=request.tolerance or 1.0)
    return request.op


def run_request(request: KernelRequest, provider, settings, *, device: str = "cpu", executor=None,
                out_dir: Path | None = None, on_progress: Callable[[str], None] | None = None) -> Outcome:
    """Generate kernels for `request` and report; the plot goes to `out_dir` when given."""
    from kforge.gen import search

    say = on_progress or (lambda message: None)
    op = ensure_op(request)
    spec = get_spec(op)
    dtypes = [getattr(torch, d) for d in request.dtypes]
    fp = str(fingerprint(torch.device(device)))
    say(f"issue request: {op} at {', '.join('x'.join(map(str, s)) for s in request.shapes)} "
        f"({', '.join(request.dtypes)}) on {device}, for {request.gpu.value}")
    if not on_target(request.gpu, fp):
        say(where_ran(request.gpu, fp))
    result = search.run(op, provider, settings, device=device, dtypes=dtypes, shapes=list(request.shapes),
                        executor=executor, on_progress=say)
    records = ScoreTable().records(fp, op)
    rows, accepted_records = [], []
    for k in result.keys:
        kernel = k.get("kernel") or {}
        record = next((r for r in records if str(r.key) == k["key"] and r.impl == kernel.get("impl")), None)
        if record is not None:  # the run's best verified kernel for the key; the router decides if it serves
            accepted_records.append(record)
        compile_us = _compile_time(spec, records, k, device)
        rows.append(Row(dtype=k["dtype"], shape=tuple(k["shape"]), before_impl=k["before"]["impl"],
                        before_us=k["before"]["p50_us"], vendor_us=k.get("vendor_p50_us"), compile_us=compile_us,
                        kernel_impl=kernel.get("impl"), kernel_us=kernel.get("p50_us"), after_impl=k["after"]["impl"],
                        after_us=k["after"]["p50_us"],
                        ceiling_fraction=None if record is None else record.ceiling_fraction,
                        provider=None if record is None else record.provider,
                        attempt_id=kernel.get("attempt_id"),
                        source_sha256=None if record is None else record.source_sha256))
    outcome = Outcome(request, result.run_id, result.status, result.attempts, result.accepted, fp, rows,
                      records=accepted_records)
    if out_dir is not None:
        outcome.plot = plot(outcome, Path(out_dir) / f"{op}-speedup.png")
    outcome.markdown = markdown(outcome)
    return outcome


def _compile_time(spec: OpSpec, records, key: dict, device: str) -> float | None:
    """torch.compile's time for the key: the table's Inductor record, else timed now (in a
    sandboxed worker for a user op, whose code may have come from the issue)."""
    found = [r.p50_us for r in records if str(r.key) == key["key"] and r.backend == "inductor"]
    if found:
        return min(found)
    shape = spec.shape_for(tuple(key["shape"]))
    if not is_builtin(spec.name):
        from kforge.evaluate.sandbox import run_isolated

        outcome = run_isolated("kforge.evaluate.worker_tasks:time_compile",
                               {"op": spec.name, "shape": list(shape), "dtype": key["dtype"], "device": device},
                               timeout_s=600.0, cuda=device.startswith("cuda"), memory_mb=8192)
        return outcome.value.get("p50_us") if outcome.ok else None
    from kforge.evaluate.calibrate import calibrate

    try:
        timed = calibrate(spec, shape, getattr(torch, key["dtype"]), device, backends=("inductor",))
    except Exception:  # noqa: BLE001 - a compile failure leaves the column empty, not the report
        return None
    return timed[0].p50_us if timed else None
