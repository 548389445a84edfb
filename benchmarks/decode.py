"""Decode sizes as a deployment first meets them: the nine ops at 1 to 64 tokens for several models'
sizes, kforge routed (bundled table, misses included) against eager, vendor and torch.compile (issue 18).

For each model (from `kforge.shapes`) and token count, every op's key in the model's forward (bf16),
on one GPU, timed together by `ops.bench_one` (outputs checked against the fp64 oracle, device p50
with L2 flushed, host cost of a call in a loop; call_us = max of the two, the router's measure).
No tuning: what the first calls get. Reported per key: the routed implementation (hit or miss) and
kforge / best of eager, vendor and compile ("vs best", higher is better).
Goal (issue 18): kforge >= 0.98x the best on at least 95% of keys, misses included.

    python benchmarks/decode.py [--models llama-3.1-8b qwen2.5-7b ...] [--tokens 1 4 16 64] [--max-seconds 480]
    python benchmarks/decode.py --report results/h200/decode.json   # RESULTS.md section (CPU)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unseen import prepare, timed_line, vs_best  # noqa: E402

MODELS = ("llama-3.1-8b", "qwen2.5-7b", "gemma-2-9b", "mixtral-8x7b")  # dense and MoE, tuned and not
GOAL_SHARE = 0.95
AT_LEAST = 0.98


def summarize(rows: list[dict]) -> dict:
    ratios = [r["vs_best"] for r in rows if r.get("vs_best")]
    out = {"keys": len(rows), "measured": len(ratios), "goal_share": GOAL_SHARE}
    if ratios:
        share = sum(v >= AT_LEAST for v in ratios) / len(ratios)
        out.update({"share_at_least_0.98": round(share, 3), "share_met": share >= GOAL_SHARE,
                    "geomean_vs_best": round(math.exp(sum(map(math.log, ratios)) / len(ratios)), 3),
                    "below": [f"{r['op']} {'x'.join(map(str, r['shape']))} ({r['routed']}): {r['vs_best']:.2f}x"
                              for r in rows if r.get("vs_best") and r["vs_best"] < AT_LEAST]})
    return out


def run(argv: list[str]) -> int:
    import kforge
    from common import environment, write_json
    from ops import bench_one

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--tokens", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--ops", nargs="*", default=None)
    parser.add_argument("--gpu-dir", default="h200")
    parser.add_argument("--name", default="decode.json")
    parser.add_argument("--out", default=None, help="also write the JSON here after every key (a cut run keeps it)")
    parser.add_argument("--max-seconds", type=float, default=480.0,
                        help="stop between keys after this long; the keys left are counted as not measured")
    args = parser.parse_args(argv)
    prepared = prepare("decode.py", args)
    if prepared is None:
        return 2
    ceilings, l2_bytes, keys = prepared
    compiled: dict = {}
    rows = []
    path = None
    started = time.perf_counter()
    for model, op, shape, dtype in keys:
        if time.perf_counter() - started > args.max_seconds:
            print(f"--max-seconds {args.max_seconds:g}: {len(keys) - len(rows)} of {len(keys)} keys not measured",
                  file=sys.stderr)
            break
        row = bench_one(kforge.ops.get_spec(op), shape, dtype, ceilings, l2_bytes, True, compiled=compiled)
        stats = kforge.stats()["ops"].get(op, {})
        rows.append({"model": model, "op": op, "shape": list(shape), "problem": row["problem"], "dtype": row["dtype"],
                     "impls": row["impls"], "routed": row["routed_impl"], "vs_best": vs_best(row),
                     "errors": row["errors"], "misses_so_far": stats.get("miss", 0)})
        payload = {"environment": environment(), "models": args.models, "tokens": args.tokens, "rows": rows,
                   "keys_requested": len(keys), "summary": summarize(rows)}
        if args.out:
            Path(args.out).write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
        path = write_json(args.name, payload, args.gpu_dir)
        print(timed_line(model, op, shape, row), file=sys.stderr, flush=True)
    print(json.dumps(summarize(rows), indent=1))
    print(f"wrote {path}", file=sys.stderr)
    return 0


def report(paths: list[Path]) -> int:
    for path in paths:
        data = json.loads(Path(path).read_text())
        env = data["environment"]
        print(f"### Decode: {', '.join(data['models'])} at {data['tokens']} tokens ({env['gpu']}, torch {env['torch']}, "
              f"kforge {env['kforge_commit']})\n")
        print(f"Command: `{env['command']}`; {len(data['rows'])} of {data.get('keys_requested', '?')} keys "
              "requested measured\n")
        print("| model | op | shape | routed | vs best |")
        print("|---|---|---|---|---|")
        for r in data["rows"]:
            ratio = "-" if r.get("vs_best") is None else f"{r['vs_best']:.2f}x"
            print(f"| {r['model']} | {r['op']} | {'x'.join(map(str, r['shape']))} | {r['routed']} | {ratio} |")
        print(f"\nSummary: `{json.dumps(data['summary'], sort_keys=True)}`\n")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--report"]:
        return report([Path(a) for a in argv[1:]])
    return run(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
