"""What the bundled table serves on a GPU at models' shapes, read with the router's own ranking (no GPU
needed: `rank(..., here=False)` ranks as the table's device would).

    python benchmarks/table_coverage.py [--device-dir cuda-NVIDIA-H200-sm90-9ebf2243f9] [--out FILE]

For every key of every model in kforge.shapes at two token sets (the tuned ones, and others no run
asked for), split into the models the bundled runs tuned and the ones they did not:
- hit: the router has a verified record it may serve for the call (an exact key, or the nearest-
  shape rule within the record's evidence); a miss is served by vendor at once and logged;
- exact: a record at exactly this key;
- where vendor's and Inductor's records are at the key the routed record is at, the measured ratios
  of the routed choice's score (max(device p50, host), what the router ranks by) over vendor's and
  over the better of vendor and Inductor: all three timed in the same run.
The first call's hit rate at a model's shapes is the issue-16 goal (>= 90%).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


from common import environment
from kforge import paths, shapes
from kforge.ops import SPECS
from kforge.router.key import call_info
from kforge.router.policy import rank
from kforge.router.table import parse_table
from kforge.specs import meta_inputs

TUNED_MODELS = ("llama-3.1-8b", "llama-3.1-70b", "llama-3.2-1b", "llama-3.2-3b", "qwen2.5-14b", "qwen2.5-72b",
                "qwen3-8b", "qwen3-32b", "qwen3-30b-a3b", "qwen3-235b-a22b", "mistral-7b-v0.3", "mistral-nemo-12b",
                "mixtral-8x7b", "deepseek-v2-lite", "deepseek-v3", "gemma-2-9b", "gemma-3-12b", "phi-3-mini", "phi-4",
                "falcon-7b")  # the models of benchmarks/results/h200/tune-models-*.json
TUNED_TOKENS = (4, 16, 64, 2048, 16384)
OTHER_TOKENS = (1, 8, 32, 512, 4096)


def _geomean(xs: list[float]) -> float | None:
    return round(math.exp(sum(math.log(x) for x in xs) / len(xs)), 3) if xs else None


def coverage(device_dir: Path, models: list[str], tokens: tuple[int, ...]) -> dict:
    records = {}
    for shard in device_dir.glob("*.json"):
        records[shard.stem] = parse_table(shard.read_text(), str(shard))[0]
    fingerprint = next(r.key.device for rs in records.values() for r in rs)
    per_op: dict[str, dict] = {}
    seen = set()
    for m in models:
        for op, keys in shapes.keys(m, tokens).items():
            spec = SPECS[op]
            for shape, dtype in keys:
                if (op, shape, dtype) in seen:
                    continue
                seen.add((op, shape, dtype))
                call = call_info(spec, meta_inputs(spec, shape, dtype), fingerprint, aligned=16)
                ranking = rank(spec, records.get(op, []), call, here=False)
                row = per_op.setdefault(op, {"keys": 0, "hits": 0, "exact": 0, "routed": {}, "vs_vendor": [],
                                             "vs_best_builtin": [], "misses": []})
                row["keys"] += 1
                if not ranking.eligible:
                    row["misses"].append(list(call.key.shape))
                    continue
                row["hits"] += 1
                row["exact"] += ranking.shape == call.key.shape
                best = ranking.eligible[0]
                kind = best.impl.split(":")[0]
                row["routed"][kind] = row["routed"].get(kind, 0) + 1
                at = {r.impl: r.score_us for r in records[op] if r.key.shape == ranking.shape
                      and r.key.dtypes == call.key.dtypes}
                if "vendor" in at and "inductor" in at:
                    row["vs_vendor"].append(at["vendor"] / best.score_us)
                    row["vs_best_builtin"].append(min(at["vendor"], at["inductor"]) / best.score_us)
    out = {}
    for op, row in sorted(per_op.items()):
        out[op] = {"keys": row["keys"], "hits": row["hits"], "hit_rate": round(row["hits"] / row["keys"], 3),
                   "exact": row["exact"], "routed": row["routed"],
                   "geomean_vs_vendor": _geomean(row["vs_vendor"]),
                   "geomean_vs_best_of_vendor_inductor": _geomean(row["vs_best_builtin"]),
                   "slower_than_best_builtin": sum(x < 0.98 for x in row["vs_best_builtin"]),
                   "misses": row["misses"][:12]}
    total = sum(r["keys"] for r in out.values())
    hits = sum(r["hits"] for r in out.values())
    return {"models": models, "tokens": list(tokens), "keys": total, "hits": hits,
            "hit_rate": round(hits / total, 3) if total else None, "per_op": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device-dir", default="cuda-NVIDIA-H200-sm90-9ebf2243f9")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    device_dir = paths.BUNDLED_TABLE_DIR / args.device_dir
    others = [m.name for m in shapes.models() if m.name not in TUNED_MODELS]
    result = {"environment": {**environment(), "table": str(device_dir.relative_to(paths.BUNDLED_TABLE_DIR.parent)),
                              "note": "routing read on the CPU; the records were measured on the table's GPU"},
              "groups": {}}
    for name, models, tokens in (("tuned models, tuned tokens", list(TUNED_MODELS), TUNED_TOKENS),
                                 ("tuned models, other tokens", list(TUNED_MODELS), OTHER_TOKENS),
                                 ("other models, tuned tokens", others, TUNED_TOKENS),
                                 ("other models, other tokens", others, OTHER_TOKENS)):
        group = coverage(device_dir, models, tokens)
        result["groups"][name] = group
        print(f"{name}: {group['hits']}/{group['keys']} keys hit ({group['hit_rate']:.0%})")
        for op, row in group["per_op"].items():
            print(f"  {op:20s} {row['hits']:4d}/{row['keys']:<4d} exact {row['exact']:4d}  routed {row['routed']}  "
                  f"vs vendor {row['geomean_vs_vendor']}  vs best builtin {row['geomean_vs_best_of_vendor_inductor']}"
                  f"  <0.98x: {row['slower_than_best_builtin']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
