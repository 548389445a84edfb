"""Host cost of a kforge call against calling PyTorch directly, on tiny tensors.

For each op, per call (median over repeats of the mean of `--number` calls, microseconds):
  (a)  the public PyTorch spelling (F.rms_norm, torch.softmax, ...),
  (a') kforge's vendor function called directly (what kforge serves on a miss),
  (b)  kforge.ops.<op> in eager (routed, dispatcher bypassed),
  (c)  torch.ops.kforge.<op> (through the torch dispatcher),
  (L)  the routing lookup alone (call signature + decision-cache lookup).
Goals (issue 2): (b) - (a) <= 1.5 us; (L) <= 0.5 us. Tiny inputs make the kernels cheap so the
host cost shows; the table is empty, so every call is a cached miss served by vendor, the path a
deployment takes before generation fills the table.

    python benchmarks/dispatch_overhead.py [--device cpu|cuda] [--number 20000] [--repeat 15]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import timeit

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, write_json  # noqa: E402

GOAL_OVERHEAD_US = 1.5
GOAL_LOOKUP_US = 0.5


def public_calls(x, w, r):
    return {
        "rms_norm": (lambda: F.rms_norm(x, (x.shape[-1],), w, 1e-6)),
        "fused_add_rms_norm": (lambda: (lambda h: (F.rms_norm(h, (h.shape[-1],), w, 1e-6), h))(x + r)),
        "softmax": (lambda: torch.softmax(x, -1)),
    }


def per_call_us(fn, number: int, repeat: int, sync) -> float:
    for _ in range(200):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t = timeit.timeit(fn, number=number)
        sync()
        times.append(t / number * 1e6)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--out", default=None, help="JSON file name under benchmarks/results/")
    args = parser.parse_args()
    os.environ.setdefault("KFORGE_HOME", tempfile.mkdtemp(prefix="kforge-bench-"))  # empty table

    import kforge
    from kforge.router.dispatch import ROUTER

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x = torch.randn(args.rows, args.hidden, device=device)
    r = torch.randn(args.rows, args.hidden, device=device)
    w = torch.randn(args.hidden, device=device)
    inputs = {"rms_norm": (x, w, 1e-6), "fused_add_rms_norm": (x, r, w, 1e-6), "softmax": (x,)}
    public = public_calls(x, w, r)

    rows = []
    for name, call_args in inputs.items():
        spec = kforge.ops.SPECS[name]
        entry = kforge.ops.ENTRIES[name]
        overload = getattr(torch.ops.kforge, name)
        route = ROUTER.ops[name]
        entry(*call_args)  # decide once: the timed calls take the cached path
        sig = route.signature(call_args)
        decisions = route.decisions
        m = lambda fn: per_call_us(fn, args.number, args.repeat, sync)  # noqa: E731
        row = {
            "op": name,
            "a_public_us": m(public[name]),
            "a_vendor_us": m(lambda: spec.vendor(*call_args)),
            "b_kforge_ops_us": m(lambda: entry(*call_args)),
            "c_torch_ops_us": m(lambda: overload(*call_args)),
            "lookup_us": m(lambda: decisions.get(route.signature(call_args))),
        }
        assert decisions.get(sig) is not None
        row["b_minus_a_us"] = row["b_kforge_ops_us"] - row["a_public_us"]
        row["b_minus_a_vendor_us"] = row["b_kforge_ops_us"] - row["a_vendor_us"]
        row["meets_overhead_goal"] = row["b_minus_a_us"] <= GOAL_OVERHEAD_US
        row["meets_lookup_goal"] = row["lookup_us"] <= GOAL_LOOKUP_US
        rows.append(row)

    env = environment()
    payload = {"benchmark": "dispatch_overhead", "environment": env, "device": str(device),
               "shape": [args.rows, args.hidden], "dtype": "float32", "number": args.number, "repeat": args.repeat,
               "goals": {"b_minus_a_us": GOAL_OVERHEAD_US, "lookup_us": GOAL_LOOKUP_US}, "results": rows}
    host = "".join(c if c.isalnum() else "-" for c in env["cpu"])[:40].strip("-")
    path = write_json(args.out or f"dispatch_overhead-{device.type}-{host}.json", payload)

    print(f"host {env['cpu']} | python {env['python']} | torch {env['torch']} | {device} {args.rows}x{args.hidden} fp32")
    print(f"{'op':20s} {'(a) public':>11s} {'(a) vendor':>11s} {'(b) kforge':>11s} {'(c) torch.ops':>13s} "
          f"{'lookup':>8s} {'b-a':>7s} {'b-a vendor':>10s}")
    for row in rows:
        print(f"{row['op']:20s} {row['a_public_us']:11.2f} {row['a_vendor_us']:11.2f} {row['b_kforge_ops_us']:11.2f} "
              f"{row['c_torch_ops_us']:13.2f} {row['lookup_us']:8.2f} {row['b_minus_a_us']:7.2f} "
              f"{row['b_minus_a_vendor_us']:10.2f}")
    print(f"goals: b-a <= {GOAL_OVERHEAD_US} us, lookup <= {GOAL_LOOKUP_US} us (us per call, median of "
          f"{args.repeat} x {args.number} calls)")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
