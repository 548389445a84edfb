"""The whole user loop at shapes of models no shape set names: first calls, `kforge tune`, the same calls.

For each model (from `kforge.shapes`, the data file the tests read) and token count, every op's key
in the model's forward (bf16), on one GPU, in one run:
  1. before: eager, vendor, torch.compile and kforge routed timed together (`ops.bench_one`: outputs
     checked against the fp64 oracle, device p50 with L2 flushed, host cost of a call in a loop;
     call_us = max of the two); kforge's calls there are misses, logged;
  2. `kforge tune --from-misses` in a child process (as a user runs it), its wall time per key;
  3. after: the same four timed again (the torch.compile builds of step 1 re-used), with the router
     re-reading the table.
Reported per key: each implementation's call_us before and after, the routed implementation, kforge
after / best of eager, vendor and compile ("vs best", higher is better), and the tuning time.

    python benchmarks/unseen.py --models qwen2.5-7b mistral-nemo-12b --tokens 1 16 1024 --gpu-dir h200
    python benchmarks/unseen.py --report results/h200/unseen.json   # RESULTS.md section + plot (CPU)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ops import bench_one  # noqa: E402

BASELINES = ("eager", "vendor", "compile")
GOAL_SHARE = 0.95  # of keys at >= 0.98x the best baseline after tuning
GOAL_GEOMEAN = 1.15


def model_keys(models: list[str], tokens: list[int], ops: list[str] | None) -> list[tuple[str, str, tuple, object]]:
    """(model, op, input shape, dtype) of every key, first model first, without repeats."""
    import torch

    from kforge import shapes

    out, seen = [], set()
    for name in models:
        model = shapes.model(name)
        for op, problems in shapes.keys(model, tokens=tokens, ops=ops, dtype=torch.bfloat16).items():
            for shape, dtype in problems:
                if (op, tuple(shape), dtype) not in seen:
                    seen.add((op, tuple(shape), dtype))
                    out.append((name, op, tuple(shape), dtype))
    return out


def vs_best(row: dict) -> float | None:
    """kforge's call time against the best baseline's (> 1: kforge faster)."""
    impls = row["impls"]
    best = min((impls[b]["call_us"] for b in BASELINES if b in impls), default=None)
    return best / impls["kforge"]["call_us"] if best and "kforge" in impls else None


def prepare(script: str, args):
    """For a run over models' keys on the GPU: `(ceilings, L2 bytes, keys)`, with Dynamo's recompile
    limits raised (one torch.compile build per key: one code object, many shapes); None without CUDA."""
    import torch

    from kforge.evaluate import roofline

    if not torch.cuda.is_available():
        print(f"benchmarks/{script} times GPU calls: no CUDA device here (use --report)", file=sys.stderr)
        return None
    keys = model_keys(args.models, args.tokens, args.ops)
    print(f"{len(keys)} keys of {len(args.models)} model(s)", file=sys.stderr, flush=True)
    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 4096)
    return roofline.ceilings("cuda"), torch.cuda.get_device_properties(0).L2_cache_size, keys


def timed_line(label: str, op: str, shape, row: dict) -> str:
    """One progress line: the key, what kforge routed it to, every implementation's call_us."""
    return (f"{label} {op} {'x'.join(map(str, shape))} [{row['routed_impl']}] "
            + "  ".join(f"{n} {v['call_us']:.1f}" for n, v in row["impls"].items()))


def summarize(keys: list[dict]) -> dict:
    ratios = [k["after_vs_best"] for k in keys if k.get("after_vs_best")]
    before = [k["before_vs_best"] for k in keys if k.get("before_vs_best")]
    tuned = [k for k in keys if k.get("after_vs_best")]
    out = {"keys": len(keys), "measured_after": len(ratios)}
    if ratios:
        at_least = sum(r >= 0.98 for r in ratios) / len(ratios)
        geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        out.update({"share_at_least_0.98_after": round(at_least, 3), "geomean_vs_best_after": round(geo, 3),
                    "goal_share": GOAL_SHARE, "goal_geomean": GOAL_GEOMEAN,
                    "share_met": at_least >= GOAL_SHARE, "geomean_met": geo >= GOAL_GEOMEAN,
                    "routed_after": {i: sum(k["routed_after"] == i for k in tuned) for i in {k["routed_after"] for k in tuned}}})
    if before:
        out["geomean_vs_best_before"] = round(math.exp(sum(math.log(r) for r in before) / len(before)), 3)
    return out


def run(argv: list[str]) -> int:

    import kforge
    from common import environment, write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--tokens", nargs="+", type=int, default=[1, 16, 1024])
    parser.add_argument("--ops", nargs="*", default=None)
    parser.add_argument("--tune-seconds", type=float, default=300.0, help="kforge tune's --max-seconds")
    parser.add_argument("--tune-args", default="", help="more arguments for kforge tune (e.g. --no-inductor)")
    parser.add_argument("--gpu-dir", default="h200")
    parser.add_argument("--name", default="unseen.json")
    parser.add_argument("--out", default=None, help="also write the JSON here after every key (a cut run keeps it)")
    args = parser.parse_args(argv)
    prepared = prepare("unseen.py", args)
    if prepared is None:
        return 2
    ceilings, l2_bytes, keys = prepared
    compiled: dict = {}  # every key's build kept for the second timing: one code object, many shapes
    rows = []

    def save(stage: str, tune: dict | None = None) -> Path:
        payload = {"environment": environment(), "models": args.models, "tokens": args.tokens, "stage": stage,
                   "ceilings": {"copy_gbps": ceilings.copy_gbps, "l2_bytes": l2_bytes}, "keys": rows,
                   "tune": tune, "summary": summarize(rows)}
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
        return write_json(args.name, payload, args.gpu_dir)

    for model, op, shape, dtype in keys:
        spec = kforge.ops.get_spec(op)
        row = bench_one(spec, shape, dtype, ceilings, l2_bytes, True, compiled=compiled)
        rows.append({"model": model, "op": op, "shape": list(shape), "problem": row["problem"],
                     "dtype": row["dtype"], "before": row["impls"], "routed_before": row["routed_impl"],
                     "before_vs_best": vs_best(row), "errors_before": row["errors"]})
        save("before")
        print(timed_line("before", op, shape, row), file=sys.stderr, flush=True)
    kforge.flush()  # the misses, for tune --from-misses
    save("before")

    command = [sys.executable, "-m", "kforge", "tune", "--from-misses", "--device", "cuda", "--json",
               "--max-seconds", f"{args.tune_seconds:g}", *args.tune_args.split()]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    tune_s = time.perf_counter() - t0
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = {"error": done.stderr[-2000:]}
    tune = {"command": " ".join(command[1:]), "exit_code": done.returncode, "seconds": round(tune_s, 1),
            "seconds_per_key": round(tune_s / max(len(keys), 1), 2), "stopped": report.get("stopped"),
            "candidates": report.get("candidates"), "error": report.get("error"),
            "progress_tail": done.stderr[-3000:]}
    print(f"tune: exit {done.returncode} in {tune_s:.0f} s ({tune['seconds_per_key']} s/key)", file=sys.stderr, flush=True)

    kforge.reset()  # decisions re-made from the table the child wrote
    for entry, (model, op, shape, dtype) in zip(rows, keys):
        spec = kforge.ops.get_spec(op)
        row = bench_one(spec, shape, dtype, ceilings, l2_bytes, True, compiled=compiled)
        entry.update({"after": row["impls"], "routed_after": row["routed_impl"], "after_vs_best": vs_best(row),
                      "errors_after": row["errors"]})
        save("after", tune)
        print(timed_line("after ", op, shape, row), file=sys.stderr, flush=True)
    path = save("after", tune)
    print(json.dumps(summarize(rows), indent=1))
    print(f"wrote {path}", file=sys.stderr)
    return 0


def report(paths: list[Path]) -> int:
    """A RESULTS.md section and a plot (vs best, before and after, per key) from result files."""
    for path in paths:
        data = json.loads(Path(path).read_text())
        keys = data["keys"]
        env = data["environment"]
        print(f"### Unseen models: {', '.join(data['models'])} ({env['gpu']}, torch {env['torch']}, "
              f"triton {env['triton']}, kforge {env['kforge_commit']})\n")
        print(f"Command: `{env['command']}`; tune: {(data.get('tune') or {}).get('seconds')} s "
              f"({(data.get('tune') or {}).get('seconds_per_key')} s per key)\n")
        print("| model | op | shape | routed before -> after | vs best before | vs best after |")
        print("|---|---|---|---|---|---|")
        for k in keys:
            def fmt(v):
                return "-" if v is None else f"{v:.2f}x"
            print(f"| {k['model']} | {k['op']} | {'x'.join(map(str, k['shape']))} | {k['routed_before']} -> "
                  f"{k.get('routed_after', '-')} | {fmt(k.get('before_vs_best'))} | {fmt(k.get('after_vs_best'))} |")
        print(f"\nSummary: `{json.dumps(data['summary'], sort_keys=True)}`\n")
        _plot(keys, Path(path).with_suffix(".png"))
    return 0


def _plot(keys: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{k['op']} {'x'.join(map(str, k['shape']))}" for k in keys]
    before = [k.get("before_vs_best") or 0 for k in keys]
    after = [k.get("after_vs_best") or 0 for k in keys]
    fig, ax = plt.subplots(figsize=(max(8, len(keys) * 0.35), 5))
    xs = range(len(keys))
    ax.bar([x - 0.2 for x in xs], before, 0.4, label="before tune")
    ax.bar([x + 0.2 for x in xs], after, 0.4, label="after tune")
    ax.axhline(0.98, color="red", linewidth=0.8, label="0.98x of the best baseline")
    ax.set_xticks(list(xs), labels, rotation=90, fontsize=6)
    ax.set_ylabel("kforge vs best of eager / vendor / compile (higher is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"plot: {out}", file=sys.stderr)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--report"]:
        return report([Path(a) for a in argv[1:]])
    return run(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
