"""What bubblewrap costs per candidate: `run_isolated` on a task with and without bwrap.

    python benchmarks/isolation_cost.py [--n 20] [--device cpu|cuda] [--out results/isolation_cost.json]

Two tasks: a trivial one (the worker's start and teardown alone) and one that imports torch (and
on CUDA creates a context and allocates: what every candidate pays before its first kernel). The
runs alternate bwrap / plain process so load drifts hit both alike; the median of `--n` each is
reported, and the cost is the difference. Needs no network. Prints JSON and writes it to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def trivial(payload):
    return 1


def imports_torch(payload):
    import torch

    if payload.get("cuda"):
        x = torch.ones(1 << 20, device="cuda")
        torch.cuda.synchronize()
        return float(x.sum())
    return float(torch.ones(4).sum())


def measure(task: str, n: int, cuda: bool) -> dict:
    from kforge.evaluate.isolation import Level
    from kforge.evaluate.sandbox import run_isolated

    times = {Level.BWRAP: [], Level.PROCESS: []}
    env = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0")} if cuda else None
    for _ in range(n):
        for level in (Level.BWRAP, Level.PROCESS):
            start = time.perf_counter()
            out = run_isolated(f"isolation_cost:{task}", {"cuda": cuda}, timeout_s=300, cuda=cuda, env=env,
                               isolation=level, trusted=True)
            elapsed = time.perf_counter() - start
            if not out.ok:
                raise SystemExit(f"{task} under {level.value}: {out.status.value}: {out.error}\n{out.stderr}")
            times[level].append(elapsed)
    bwrap, plain = statistics.median(times[Level.BWRAP]), statistics.median(times[Level.PROCESS])
    return {"median_s_bwrap": round(bwrap, 4), "median_s_process": round(plain, 4),
            "cost_s": round(bwrap - plain, 4), "runs": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the worker imports this file's tasks
    import torch

    from kforge.evaluate import isolation

    iso = isolation.probe()
    if iso.level is not isolation.Level.BWRAP:
        raise SystemExit(f"bwrap cannot run here: {iso.reason}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    result = {"device": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "bwrap": iso.version, "python": platform.python_version(),
              "torch": torch.__version__, "command": " ".join(sys.argv),
              "trivial": measure("trivial", args.n, False),
              "torch_import" + ("_cuda" if cuda else ""): measure("imports_torch", args.n, cuda)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
