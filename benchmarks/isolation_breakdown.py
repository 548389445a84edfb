"""Where bubblewrap's cost on a CUDA worker goes: one `import torch; CUDA init; one kernel`
process, run plain and under variants of kforge's bwrap command line (`isolation.bwrap_argv`).

    python benchmarks/isolation_breakdown.py [--n 3] [--out results/h200/isolation-breakdown.json]

Each run reports its own wall time and, from inside, the seconds spent importing torch and
creating the CUDA context, so a cost that bwrap adds at start-up (namespaces, mounts) is told
apart from one inside the process (slower imports, slower driver start). Variants:
  full      kforge's command line as the harness uses it
  no_sys    without /sys bound (the driver then finds no PCI topology)
  share_pid without a PID namespace (the other namespaces kept)
  host_env  the worker's environment plus the host's CUDA_* / NVIDIA_* / LD_* variables
  kforge_env / kforge_env_plain  the environment `run_isolated` builds (scratch HOME and caches,
            the device-memory cap, MALLOC_ARENA_MAX), under `full`'s command line and without bwrap
Runs alternate across variants so load drift hits them alike; medians of `--n`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

PROBE = ("import time; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); "
         "x = torch.ones(1 << 20, device='cuda'); torch.cuda.synchronize(); t2 = time.perf_counter(); "
         "float(x.sum()); t3 = time.perf_counter(); print(t1 - t0, t2 - t1, t3 - t2)")


def variants(bwrap: str, work: str, env: dict) -> dict[str, list[str] | None]:
    from kforge.evaluate import isolation

    command = [sys.executable, "-c", PROBE]
    full = isolation.bwrap_argv(bwrap, command, work=work, env=env, cuda=True, sys_path=sys.path)
    no_sys = list(full)
    i = no_sys.index("/sys")
    del no_sys[i - 1:i + 2]
    share_pid = [a for a in full if a != "--unshare-all"]
    share_pid[1:1] = ["--unshare-user", "--unshare-ipc", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    extra = {k: v for k, v in os.environ.items() if k.startswith(("CUDA_", "NVIDIA_", "LD_"))}
    host_env = isolation.bwrap_argv(bwrap, command, work=work, env={**env, **extra}, cuda=True, sys_path=sys.path)
    return {"plain": None, "full": full, "no_sys": no_sys, "share_pid": share_pid, "host_env": host_env,
            "kforge_env": full, "kforge_env_plain": None}


def kforge_env(scratch) -> dict[str, str]:
    """The worker environment of `sandbox.run_isolated` for a CUDA task, in `scratch`."""
    from kforge.evaluate import sandbox

    env = sandbox.sandbox_env(scratch, sandbox.DEFAULT_ALLOW, {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
                             cuda=True)
    return env


def run_once(argv: list[str] | None, env: dict) -> dict:
    cmd = argv if argv is not None else [sys.executable, "-c", PROBE]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env if argv is None else {"PATH": os.environ.get("PATH", "")},
                          capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ...: exit {done.returncode}\n{done.stderr[-2000:]}")
    imp, init, kernel = (float(v) for v in done.stdout.split()[-3:])
    return {"wall_s": wall, "import_s": imp, "cuda_init_s": init, "first_kernel_s": kernel}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from kforge.evaluate import isolation

    iso = isolation.probe()
    if iso.level is not isolation.Level.BWRAP:
        raise SystemExit(f"bwrap cannot run here: {iso.reason}")
    with tempfile.TemporaryDirectory(prefix="kforge-breakdown-") as work:
        os.makedirs(os.path.join(work, "tmp"))
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0"),
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        table = variants(iso.bwrap, work, env)
        scratch = isolation.Scratch()
        try:
            envs = {name: env for name in table}
            envs["kforge_env"] = envs["kforge_env_plain"] = kforge_env(scratch)
            table["kforge_env"] = isolation.bwrap_argv(iso.bwrap, [sys.executable, "-c", PROBE], work=scratch.work,
                                                       env=envs["kforge_env"], cuda=True, sys_path=sys.path)
            runs: dict[str, list[dict]] = {name: [] for name in table}
            for _ in range(args.n):
                for name, argv in table.items():
                    runs[name].append(run_once(argv, envs[name]))
        finally:
            scratch.remove()
    result = {"bwrap": iso.version, "python": sys.version.split()[0], "command": " ".join(sys.argv), "runs": args.n,
              "variants": {name: {k: round(statistics.median(r[k] for r in rs), 4) for k in rs[0]}
                           for name, rs in runs.items()}}
    try:
        import torch

        result["device"] = torch.cuda.get_device_name(0)
        result["torch"] = torch.__version__
    except Exception as exc:  # the breakdown stands without the name
        result["device"] = f"unknown ({type(exc).__name__})"
    plain = result["variants"]["plain"]["wall_s"]
    for v in result["variants"].values():
        v["cost_s"] = round(v["wall_s"] - plain, 4)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
