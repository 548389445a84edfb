"""Render `benchmarks/compile_backend.py` results: a markdown section of RESULTS.md.

    python benchmarks/compile_backend.py --report benchmarks/results/h200/compile_backend-llama.json \
        benchmarks/results/h200/compile_backend-moe.json [--results-md PATH]

Several runs (one device call lasts at most 10 minutes, so the blocks are measured in parts) merge
into one table: a later run's row replaces an earlier one of the same block, set and size; each
run's command is listed. Runs on any machine (no GPU): it reads the JSON and replaces the section
between the `<!-- compile:begin -->` and `<!-- compile:end -->` markers (appending it the first time).
`summarize` (the geomean ratios) lives here too: the runner imports this module, never the other way.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

BEGIN, END = "<!-- compile:begin -->", "<!-- compile:end -->"


def merge(runs: list[dict]) -> dict:
    """One result from several runs on the same GPU: a later run's row replaces an earlier one of
    the same block, set and size; each run's command is kept."""
    gpus = {run["environment"].get("gpu") for run in runs}
    if len(gpus) > 1:
        raise SystemExit(f"compile report: the runs are from different GPUs {sorted(map(str, gpus))}: report them separately")
    rows: dict[tuple, dict] = {}
    merged = dict(runs[-1], blocks={}, skipped=[])
    for run in runs:
        merged["blocks"].update(run["blocks"])
        for row in run["rows"]:
            rows[(row["block"], row["set"], tuple(row["size"]))] = row
    merged["skipped"] = [s for run in runs for s in run["skipped"] if (s["block"], s["set"], tuple(s["size"])) not in rows]
    merged["rows"] = list(rows.values())
    merged["modes"] = list(dict.fromkeys(m for run in runs for m in run["modes"]))
    merged["summary"] = summarize(merged["rows"])
    merged["runs"] = [{"date": run["environment"].get("date"), "command": run["environment"].get("command"),
                       "total_s": run.get("total_s"), "on_miss": run.get("on_miss")} for run in runs]
    return merged


def summarize(rows: list[dict]) -> dict:
    """Geomean of each ratio per mode over the rows that have it."""
    values: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        for mode, r in row.get("ratios", {}).items():
            for key, v in r.items():
                values.setdefault(mode, {}).setdefault(key, []).append(v)
    return {"geomean_time_ratio": {mode: {k: round(math.exp(sum(map(math.log, v)) / len(v)), 4) for k, v in r.items()}
                                   for mode, r in values.items()}}


def _us(impl: dict | None, key: str = "call_us") -> str:
    return "-" if not impl or key not in impl else f"{impl[key]:.1f}"


def _ratio(r: dict, key: str) -> str:
    return f"{r[key]:.3f}" if key in r else "-"


def markdown(data: dict, json_paths: list[Path]) -> str:
    env = data["environment"]
    runs = data.get("runs") or [{"date": env.get("date"), "command": env.get("command"), "total_s": data.get("total_s"),
                                 "on_miss": data.get("on_miss")}]
    lines = [BEGIN, f"## Model blocks under torch.compile: eager, inductor, kforge (`benchmarks/compile_backend.py`, "
             f"{env.get('gpu') or data['device']})", "",
             f"torch {env.get('torch')}, Triton {env.get('triton')}; {data['dtype']}, torch.no_grad(), static shapes; "
             f"kforge {env.get('kforge_commit')}; JSON " + ", ".join(f"`{p.name}`" for p in json_paths) + "; runs:",
             *[f"- {r['date']}: `{r['command']}` ({r['total_s']} s; kforge backend on_miss "
               f"{r.get('on_miss') or 'default'})" for r in runs], "",
             "Blocks (kforge/compile/models.py): " + "; ".join(f"{name} {b['class']}"
                                                     f"({', '.join(f'{k}={v}' for k, v in b['dims'].items())}), "
                                                     f"{b['weight_bytes'] / 2**20:.0f} MiB of weights"
                                                     for name, b in data["blocks"].items()) + ".",
             "Times in microseconds: p50 per call of back-to-back calls (`call`), and of one call behind a GPU sleep "
             "(`device`: the kernels alone). Ratios are times over the baseline's in the same mode (< 1: kforge faster). "
             "`control` is the kforge backend with no rewrites (the same graph as Inductor's): control/inductor shows "
             "how far two identical graphs differ, the floor under which a ratio means nothing. `err` is max |kforge - "
             "inductor| (max |inductor - eager| in brackets). `rewrites` are what the kforge compile rewrote.", "",
             "| block | size | mode | eager call | inductor call | kforge call | kforge/inductor call | control/inductor call "
             "| inductor device | kforge device | **kforge/inductor device** | control/inductor device | kforge/eager device "
             "| err | compile s (ind, kf) | rewrites |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in data["rows"]:
        impls = row["impls"]
        for mode in data["modes"]:
            done = (impls.get(f"kforge/{mode}") or {}).get("rewrote")
            rewrites = ", ".join(f"{op} x{n}" for op, n in sorted((done or {}).items())) or "none"
            kf, ind, r = impls.get(f"kforge/{mode}"), impls.get(f"inductor/{mode}"), row["ratios"].get(mode, {})
            acc = row["accuracy"]["modes"].get(mode)
            err = "-" if not acc else f"{acc['kforge_vs_inductor']:.3g} ({acc['inductor_vs_eager']:.3g})"
            compile_s = "/".join("-" if not i or "compile_s" not in i else f"{i['compile_s']:.0f}" for i in (ind, kf))
            skips = sum((i or {}).get("cudagraph_skips", 0) for i in (ind, kf))
            lines.append(f"| {row['block']} | {row['set']} {'x'.join(map(str, row['size']))} | {mode}"
                         + (" (graph skipped)" if skips and mode == "reduce-overhead" else "")
                         + f" | {_us(impls.get('eager'))} | {_us(ind)} | {_us(kf)} | {_ratio(r, 'kforge/inductor')} | "
                         f"{_ratio(r, 'control/inductor')} | {_us(ind, 'device_us')} | {_us(kf, 'device_us')} | "
                         f"**{_ratio(r, 'kforge/inductor device')}** | {_ratio(r, 'control/inductor device')} | "
                         f"{_ratio(r, 'kforge/eager device')} | {err} | {compile_s} | {rewrites} |")
    geo = data["summary"]["geomean_time_ratio"]
    lines += ["", "Geomean time ratios: " + "; ".join(
        f"{mode}: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(r.items())) for mode, r in geo.items()) + "."]
    errors = [f"- {row['block']} {row['set']} {'x'.join(map(str, row['size']))} {name}: {i['error']}"
              for row in data["rows"] for name, i in row["impls"].items() if "error" in i]
    errors += [f"- {row['block']} {row['set']} {'x'.join(map(str, row['size']))}: {row['error']}"
               for row in data["rows"] if "error" in row]
    errors += [f"- {s['block']} {s['set']} {'x'.join(map(str, s['size']))}: {s['why']}" for s in data["skipped"]]
    if errors:
        lines += ["", "Not measured:", *errors]
    lines.append(END)
    return "\n".join(lines) + "\n"


def report(json_paths: list[Path], results_md: Path) -> int:
    data = merge([json.loads(path.read_text()) for path in json_paths])
    section = markdown(data, json_paths)
    text = results_md.read_text() if results_md.exists() else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    results_md.write_text(text)
    print(section)
    print(f"updated {results_md}", file=sys.stderr)
    return 0
