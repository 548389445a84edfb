"""Evaluation throughput of `kforge tune` (issue 16): candidate-key evaluations per minute and
seconds per key, with cold workers, with spare workers, and with spares plus the seeds' shared
compile cache already filled, each regime one `kforge tune` child process (as a user runs it) on
the same keys.

    python benchmarks/throughput.py --key softmax:bf16:16x152064 --key rms_norm:bf16:16x3584 --out results/h200/throughput.json

A candidate-key evaluation is one candidate verified and timed at one key (a worker that takes a
candidate at 3 keys counts 3). Rates: over the candidates' own wall time (worker start included),
and over the whole run (calibrations of vendor and Inductor included).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment  # noqa: E402

REGIMES = (("cold", "0", "fresh"), ("spares", "1", "fresh"), ("spares+cache", "1", "reuse"))


def run_tune(keys: list[str], device: str, warm: str, home: str, timeout: float) -> tuple[dict, float, str]:
    env = {**os.environ, "KFORGE_WARM_WORKERS": warm, "KFORGE_HOME": home}
    argv = [sys.executable, "-m", "kforge", "tune", *[a for k in keys for a in ("--key", k)], "--device", device, "--json"]
    t0 = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t0
    try:
        return json.loads(done.stdout), wall, done.stderr[-3000:]
    except ValueError:
        return {"error": f"exit {done.returncode}", "stdout": done.stdout[-2000:]}, wall, done.stderr[-3000:]


def summarize(report: dict, wall: float) -> dict:
    cands = [c for c in report.get("candidates", []) if c["verdict"] in ("accepted", "rejected")]
    evals = sum(c.get("keys", 0) for c in cands)
    cand_s = sum(c["seconds"] for c in cands)
    keys = report.get("keys", [])
    return {"wall_s": round(wall, 2), "keys": len(keys), "candidates": len(cands), "candidate_key_evals": evals,
            "candidate_s": round(cand_s, 2), "calibrate_s": round(sum(k.get("calibrate_s", 0) for k in keys), 2),
            "evals_per_min_candidates": round(60 * evals / cand_s, 2) if cand_s else None,
            "evals_per_min_wall": round(60 * evals / wall, 2) if wall else None,
            "seconds_per_key": round(wall / len(keys), 2) if keys else None,
            "per_candidate": [{k: c.get(k) for k in ("op", "impl", "origin", "verdict", "seconds", "keys", "phases")}
                              for c in cands],
            "recorded_keys": sum(1 for k in keys if k.get("recorded")),
            "routed": {f"{k['op']} {k['dtype']} {'x'.join(map(str, k['shape']))}": [k.get("routed"),
                                                                                       k.get("speedup_vs_vendor")]
                       for k in keys}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--key", action="append", required=True, help="OP:DTYPE:SHAPE, repeatable")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--timeout", type=float, default=400)
    parser.add_argument("--out", required=True)
    parser.add_argument("--regimes", default=",".join(r[0] for r in REGIMES),
                        help="which regimes to run, comma-separated (default: all; spares+cache needs spares first)")
    args = parser.parse_args()
    wanted = set(args.regimes.split(","))
    unknown = wanted - {r[0] for r in REGIMES}
    if unknown:
        parser.error(f"unknown regime(s) {', '.join(sorted(unknown))}; valid: {', '.join(r[0] for r in REGIMES)}")
    out = {"environment": environment(), "keys": args.key, "regimes": {}}
    homes = {}
    for name, warm, home_kind in (r for r in REGIMES if r[0] in wanted):
        home = homes.get("last") if home_kind == "reuse" and "last" in homes else tempfile.mkdtemp(prefix=f"kforge-{name}-")
        homes["last"] = home
        report, wall, log = run_tune(args.key, args.device, warm, home, args.timeout)
        out["regimes"][name] = {**summarize(report, wall), "log_tail": log[-1500:]}
        s = out["regimes"][name]
        print(f"{name:13s} wall {s['wall_s']:7.1f} s  {s['keys']} keys  {s['candidate_key_evals']} evals  "
              f"{s['evals_per_min_candidates']} /min (candidates)  {s['evals_per_min_wall']} /min (wall)  "
              f"{s['seconds_per_key']} s/key", flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
