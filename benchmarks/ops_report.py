"""Render a `benchmarks/ops.py` result: a markdown section of RESULTS.md and one PNG plot.

    python benchmarks/ops.py --report benchmarks/results/h200/ops-a.json [ops-b.json ...]

Several runs (a device call lasts at most 10 minutes, so a suite is measured in parts) are merged
into one table: rows in suite order, a later run's row replacing an earlier one of the same op,
shape and dtype, and the summary recomputed over the merged rows; each run's command is listed.
Runs on any machine (no GPU): it reads the JSON, replaces the section between the
`<!-- ops:begin -->` and `<!-- ops:end -->` markers of benchmarks/RESULTS.md (appending it the
first time), and writes `ops-speedup.png` next to the JSON (matplotlib, if installed).

The pure functions over results live here, the runner imports them (never the other way round):
`shape_class` (the bandwidth-goal classes of benchmarks/ops.py's docstring), `summarize` (speedups
and goals, met or missed).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN, END = "<!-- ops:begin -->", "<!-- ops:end -->"
# The goals a run is summarized against (`summarize`, called by benchmarks/ops.py after every shape).
GOALS = {
    "never_lose": 1.02,  # kforge call_us over the best of eager, vendor and compile, at most
    "large": 0.97, "mid": 0.90, "short_rows": 0.70,  # fraction of the copy ceiling, at least
    "geomean_vs_eager": 3.0, "geomean_vs_compile": 1.15,
}


def shape_class(spec, problem, nbytes: int, l2_bytes: int) -> str:
    if nbytes >= 4 * l2_bytes:
        return "large"
    if nbytes < l2_bytes // 4:
        return "small"  # launch-bound whatever its rows: a decode step's router call moves a few KB
    if problem[-1] <= 512 and spec.problem_dims[-1] not in ("k",):
        return "short_rows"
    return "mid"


def summarize(rows: list[dict]) -> dict:
    """Speedups per row (kforge over each baseline, by call_us) and the goals, met or missed."""
    vs = {name: [] for name in ("eager", "vendor", "compile", "best")}
    losses, ceiling_misses = [], []
    for row in rows:
        impls = row["impls"]
        if "kforge" not in impls:
            continue
        mine = impls["kforge"]["call_us"]
        others = {n: impls[n]["call_us"] for n in ("eager", "vendor", "compile") if n in impls}
        row["speedup"] = {n: round(t / mine, 3) for n, t in others.items()}
        if others:
            best = min(others.values())
            row["speedup"]["best"] = round(best / mine, 3)
            if mine > GOALS["never_lose"] * best:
                losses.append(f"{row['op']} {row['shape']}: {mine:.1f} us vs {best:.1f} ({min(others, key=others.get)})")
        for n, s in row["speedup"].items():
            vs[n].append(s)
        goal = GOALS.get(row["class"])
        if goal is not None and impls["kforge"]["frac_ceiling"] < goal:
            ceiling_misses.append(f"{row['op']} {row['shape']} ({row['class']}): "
                                  f"{impls['kforge']['frac_ceiling']:.1%} < {goal:.0%}")
    geo = {n: round(math.exp(sum(math.log(s) for s in v) / len(v)), 3) for n, v in vs.items() if v}
    return {"geomean_speedup": geo, "losses": losses, "ceiling_misses": ceiling_misses, "goals": GOALS,
            "never_lose_met": not losses,
            "geomean_vs_eager_met": geo.get("eager", 0) >= GOALS["geomean_vs_eager"],
            "geomean_vs_compile_met": geo.get("compile", 0) >= GOALS["geomean_vs_compile"]}




def _us(impl: dict | None) -> str:
    return "-" if impl is None else f"{impl['call_us']:.1f}"


def _x(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def merge(runs: list[dict]) -> dict:
    """One result from several runs of benchmarks/ops.py on the same GPU (see the module docstring)."""
    import kforge

    gpus = {run["environment"].get("gpu") for run in runs}
    if len(gpus) > 1:
        raise SystemExit(f"ops report: the runs are from different GPUs {sorted(map(str, gpus))}: report them separately")
    rows: dict[tuple, dict] = {}
    for run in runs:
        for row in run["rows"]:
            rows[(row["op"], tuple(row["shape"]), row["dtype"])] = row
    merged = dict(runs[-1])
    for (op, _, _), row in rows.items():  # classes by the current rule (shape_class)
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
