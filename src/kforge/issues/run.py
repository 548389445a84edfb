"""`kforge issue run`: a validated kernel request -> generation -> a markdown report (and a plot).

The request's op is an existing one, or a new one whose reference code (from the issue: untrusted)
is built in a sandboxed worker (`issues.newop`). Generation is `kforge generate`'s search at the
request's shapes and dtypes. The report gives per key the time before the run (what the table
served), vendor's time in the same run, torch.compile's (the table's Inductor record, or timed now
for a built-in op), the accepted kernel's time and its speedups, the fraction of the device's
roofline it reaches, and where it came from (provider, attempt, source hash).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch

from kforge.device import fingerprint
from kforge.issues.request import KernelRequest
from kforge.ops import get_spec, is_builtin
from kforge.router.table import ScoreTable
from kforge.specs import OpSpec
from kforge.userops import load, persist
from kforge.userops.build import OpKind
from kforge.userops.kernelbench import kernelbench_problems
from kforge.userops.untrusted import Trust


@dataclasses.dataclass
class Row:
    dtype: str
    shape: tuple[int, ...]
    before_impl: str
    before_us: float | None
    vendor_us: float | None
    compile_us: float | None
    kernel_impl: str | None
    kernel_us: float | None
    after_impl: str
    after_us: float | None
    ceiling_fraction: float | None
    provider: str | None
    attempt_id: str | None
    source_sha256: str | None

    def ratio(self, baseline: float | None) -> float | None:
        if baseline is None or self.kernel_us in (None, 0):
            return None
        return baseline / self.kernel_us


@dataclasses.dataclass
class Outcome:
    request: KernelRequest
    run_id: str
    status: str
    attempts: int
    accepted: int
    device: str
    rows: list[Row]
    markdown: str = ""
    plot: Path | None = None
    records: list = dataclasses.field(default_factory=list)  # the accepted kernels' table records

    def to_json(self) -> dict[str, Any]:
        return {"request": self.request.to_json(), "run_id": self.run_id, "status": self.status,
                "attempts": self.attempts, "accepted": self.accepted, "device": self.device,
                "rows": [dataclasses.asdict(r) for r in self.rows], "plot": str(self.plot) if self.plot else None}


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
    say(f"issue request: {op} at {', '.join('x'.join(map(str, s)) for s in request.shapes)} "
        f"({', '.join(request.dtypes)}) on {device}")
    result = search.run(op, provider, settings, device=device, dtypes=dtypes, shapes=list(request.shapes),
                        executor=executor, on_progress=say)
    fp = str(fingerprint(torch.device(device)))
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


def _us(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def markdown(outcome: Outcome) -> str:
    """The report posted to the issue (numbers only from this run and the table; the request's
    free text is not repeated: it is data for people, not for the report)."""
    r = outcome.request
    lines = [f"## kforge: `{r.op}`{' (new op)' if r.new_op else ''}",
             "",
             f"Run `{outcome.run_id}` on `{outcome.device}`: {outcome.status}; {outcome.attempts} attempts, "
             f"{outcome.accepted} accepted. Goal: {getattr(r.goal, 'value', r.goal)}; target GPU: "
             f"{getattr(r.gpu, 'value', r.gpu)}.", "",
             "| dtype | shape | before (us) | vendor (us) | torch.compile (us) | kernel (us) | vs vendor "
             "| vs compile | roofline | served now | kernel provenance |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in outcome.rows:
        provenance = "-" if row.kernel_impl is None else (
            f"`{row.kernel_impl}` by {row.provider or '?'}, attempt `{row.attempt_id}`"
            + (f", sha256 `{row.source_sha256[:12]}`" if row.source_sha256 else ""))
        roof = "-" if row.ceiling_fraction is None else f"{100 * row.ceiling_fraction:.0f}%"
        lines.append(f"| {row.dtype} | {'x'.join(map(str, row.shape))} | {_us(row.before_us)} ({row.before_impl}) | "
                     f"{_us(row.vendor_us)} | {_us(row.compile_us)} | {_us(row.kernel_us)} | {_x(row.ratio(row.vendor_us))} | "
                     f"{_x(row.ratio(row.compile_us))} | {roof} | {row.after_impl} | {provenance} |")
    if not outcome.rows:
        lines.append("| - | - | - | - | - | - | - | - | - | - | no kernel was verified |")
    lines += ["", "Times are device medians from one run (vendor timed beside each candidate). "
              "`served now` is what kforge routes this key to after the run."]
    if r.tolerance is not None:
        applied = "applied" if r.new_op else "not applied: an existing op keeps its own budget, kernels were verified at it"
        lines.append(f"Requested tolerance: {r.tolerance:g}x the op's error budget ({applied}).")
    if any(row.compile_us is None for row in outcome.rows):
        lines.append("`-` for torch.compile: it failed to build or time the op at that key.")
    if outcome.plot is not None:
        lines.append(f"\nPlot: `{outcome.plot.name}`.")
    return "\n".join(lines) + "\n"


def plot(outcome: Outcome, path: Path) -> Path | None:
    """A bar chart of the times per key (None when matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [row for row in outcome.rows if row.kernel_us is not None]
    if not rows:
        return None
    labels = [f"{row.dtype}\n{'x'.join(map(str, row.shape))}" for row in rows]
    series = {"vendor": [row.vendor_us or 0 for row in rows], "torch.compile": [row.compile_us or 0 for row in rows],
              "kforge kernel": [row.kernel_us for row in rows]}
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(rows)), 3.2))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ax.bar([j + i * width for j in range(len(rows))], values, width, label=name)
    ax.set_xticks([j + width for j in range(len(rows))], labels)
    ax.set_ylabel("us per call (lower is better)")
    parts = outcome.device.split("|")
    ax.set_title(f"{outcome.request.op} on {parts[1] if len(parts) > 1 else parts[0]}")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
