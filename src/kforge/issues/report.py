"""The report of `kforge issue run`: its rows and outcome, the markdown posted to the issue and the
bar chart of the times per key."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from kforge.device import DeviceFingerprint
from kforge.issues.form import TargetGpu
from kforge.issues.request import KernelRequest


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

    @property
    def on_target(self) -> bool:
        """Whether the run's device is the GPU the request names (any GPU for "any")."""
        return on_target(self.request.gpu, self.device)

    def to_json(self) -> dict[str, Any]:
        return {"request": self.request.to_json(), "run_id": self.run_id, "status": self.status,
                "attempts": self.attempts, "accepted": self.accepted, "device": self.device,
                "on_target": self.on_target, "where_ran": where_ran(self.request.gpu, self.device),
                "rows": [dataclasses.asdict(r) for r in self.rows], "plot": str(self.plot) if self.plot else None}


def on_target(gpu: TargetGpu, device: str) -> bool:
    """Whether `device` (a fingerprint string) is a GPU of the requested model."""
    fp = _parse(device)
    if fp is None or fp.kind != "cuda":
        return False
    return gpu is TargetGpu.ANY or gpu.value.lower() in fp.name.lower()


def where_ran(gpu: TargetGpu, device: str) -> str:
    """One sentence for the report and the command's output: the device the run used and, when it
    is not the requested GPU, what its numbers do and do not say."""
    fp = _parse(device)
    name = device if fp is None else fp.name
    wanted = "a GPU" if gpu is TargetGpu.ANY else f"the requested {gpu.value}"
    target = "a GPU" if gpu is TargetGpu.ANY else f"an {gpu.value}"  # H100, H200, A100: "an"
    if on_target(gpu, device):
        return f"Ran on {name}" + ("" if gpu is TargetGpu.ANY else f", the requested {gpu.value}") + "."
    if fp is not None and fp.kind == "cpu":
        return (f"Ran on a CPU ({name}), not on {wanted}: the kernels were verified in Triton's interpreter "
                f"and the times are CPU wall times, which say nothing about their speed on {target}; run the "
                f"request on {target} runner for that.")
    return (f"Ran on {name}, not on {wanted}: the kernels are verified there too, but the times are "
            f"that GPU's and may rank kernels differently on {target}.")


def _parse(device: str) -> DeviceFingerprint | None:
    try:
        return DeviceFingerprint.parse(device)
    except ValueError:
        return None


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
             f"{getattr(r.gpu, 'value', r.gpu)}.", "", where_ran(r.gpu, outcome.device), "",
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
