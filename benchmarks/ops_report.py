"""Render a `benchmarks/ops.py` result: a markdown section of RESULTS.md and one PNG plot.

    python benchmarks/ops.py --report benchmarks/results/h200/ops-a.json [ops-b.json ...]

Several runs (a device call lasts at most 10 minutes, so a suite is measured in parts) are merged
into one table: rows in suite order, a later run's row replacing an earlier one of the same op,
shape and dtype, and the summary recomputed over the merged rows; each run's command is listed.
Runs on any machine (no GPU): it reads the JSON, replaces the section between the
`<!-- ops:begin -->` and `<!-- ops:end -->` markers of benchmarks/RESULTS.md (appending it the
first time), and writes `ops-speedup.png` next to the JSON (matplotlib, if installed).
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN, END = "<!-- ops:begin -->", "<!-- ops:end -->"


def _us(impl: dict | None) -> str:
    return "-" if impl is None else f"{impl['call_us']:.1f}"


def _x(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def merge(runs: list[dict]) -> dict:
    """One result from several runs of benchmarks/ops.py on the same GPU (see the module docstring)."""
    import kforge
    from ops import shape_class, summarize

    gpus = {run["environment"].get("gpu") for run in runs}
    if len(gpus) > 1:
        raise SystemExit(f"ops report: the runs are from different GPUs {sorted(map(str, gpus))}: report them separately")
    rows: dict[tuple, dict] = {}
    for run in runs:
        for row in run["rows"]:
            rows[(row["op"], tuple(row["shape"]), row["dtype"])] = row
    merged = dict(runs[-1])
    for (op, _, _), row in rows.items():  # classes by the current rule (ops.shape_class)
        row["class"] = shape_class(kforge.ops.get_spec(op), row["problem"], row["bytes"], run["ceilings"]["l2_bytes"])
    merged["rows"] = list(rows.values())
    merged["summary"] = summarize(merged["rows"])
    merged["runs"] = [{"date": run["environment"].get("date"), "command": run["environment"].get("command"),
                       "copy_gbps": run["ceilings"]["copy_gbps"]} for run in runs]
    return merged


def markdown(data: dict, json_paths: list[Path]) -> str:
    env, summary = data["environment"], data["summary"]
    runs = data.get("runs") or [{"date": env.get("date"), "command": env.get("command"),
                                 "copy_gbps": data["ceilings"]["copy_gbps"]}]
    lines = [
        BEGIN,
        f"## Ops against eager, vendor and torch.compile (`benchmarks/ops.py`, {env.get('gpu')})",
        "",
        f"torch {env.get('torch')}, Triton {env.get('triton')}; {data['dtype']}; JSON "
        + ", ".join(f"`{p.name}`" for p in json_paths) + "; runs (copy ceiling measured in each):",
        *[f"- {run['date']}: `{run['command']}` ({run['copy_gbps']:.0f} GB/s)" for run in runs],
        "",
        "Times are call_us = max(device p50 with L2 flushed, host cost per call in a loop), in microseconds; "
        "speedups are kforge's call_us against each baseline's; `%ceil` is kforge's op bytes over its device "
        "time as a fraction of the copy ceiling. `kforge impl` is what the router served.",
        "",
        "| op | shape | class | eager | vendor | compile | kforge | kforge impl | vs eager | vs vendor | vs compile "
        "| vs best | %ceil |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        impls, sp = row["impls"], row.get("speedup", {})
        frac = impls.get("kforge", {}).get("frac_ceiling")
        vendor = _us(impls.get("vendor")) + ("" if row["fused_vendor"] else " (composition)")
        lines.append(f"| {row['op']} | {'x'.join(map(str, row['shape']))} | {row['class']} | {_us(impls.get('eager'))} | "
                     f"{vendor} | {_us(impls.get('compile'))} | {_us(impls.get('kforge'))} | "
                     f"{row['routed_impl'].split(':')[0]} | {_x(sp.get('eager'))} | {_x(sp.get('vendor'))} | "
                     f"{_x(sp.get('compile'))} | {_x(sp.get('best'))} | "
                     f"{'-' if frac is None else f'{frac:.0%}'} |")
    geo = summary["geomean_speedup"]
    lines += [
        "",
        f"Geomean speedup of kforge: {', '.join(f'{_x(v)} vs {k}' for k, v in geo.items())}.",
        f"Goals: never lose (<= {summary['goals']['never_lose']}x the best baseline): "
        f"{'met' if summary['never_lose_met'] else 'MISSED on ' + str(len(summary['losses'])) + ' shapes'}; "
        f"geomean >= {summary['goals']['geomean_vs_eager']}x eager: {'met' if summary['geomean_vs_eager_met'] else 'MISSED'}; "
        f">= {summary['goals']['geomean_vs_compile']}x compile: {'met' if summary['geomean_vs_compile_met'] else 'MISSED'}.",
    ]
    if summary["losses"]:
        lines += ["", "Shapes where kforge loses:", *[f"- {item}" for item in summary["losses"]]]
    if summary["ceiling_misses"]:
        lines += ["", "Bandwidth goals missed:", *[f"- {item}" for item in summary["ceiling_misses"]]]
    errors = [f"- {row['op']} {'x'.join(map(str, row['shape']))} {name}: {msg}"
              for row in data["rows"] for name, msg in row.get("errors", {}).items()]
    if errors:
        lines += ["", "Implementations excluded (failed the oracle check or did not compile):", *errors]
    lines += ["", f"![speedup per shape](results/{json_paths[0].parent.name}/ops-speedup.png)", END]
    return "\n".join(lines) + "\n"


def plot(data: dict, png: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in data["rows"] if "speedup" in r]
    labels = [f"{r['op']} {'x'.join(map(str, r['shape']))}" for r in rows]
    series = [("eager", "#999999"), ("compile", "#1f77b4"), ("best", "#d62728")]
    fig, ax = plt.subplots(figsize=(max(10, 0.32 * len(rows)), 5.5))
    width = 0.27
    for n, (name, color) in enumerate(series):
        values = [r["speedup"].get(name, float("nan")) for r in rows]
        ax.bar([i + (n - 1) * width for i in range(len(rows))], values, width, label=f"vs {name}", color=color)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("kforge speedup (call time ratio, log scale)")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=75, ha="right", fontsize=7)
    ax.set_title("kforge routed call vs eager / torch.compile / best baseline, "
                 f"{data['environment'].get('gpu')}, {data['dtype']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def report(json_paths: list[Path]) -> int:
    data = merge([json.loads(path.read_text()) for path in json_paths])
    section = markdown(data, json_paths)
    text = RESULTS_MD.read_text()
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS_MD.write_text(text)
    png = json_paths[0].parent / "ops-speedup.png"
    print(f"updated {RESULTS_MD}" + (f"; wrote {png}" if plot(data, png) else "; matplotlib missing: no plot"))
    return 0
