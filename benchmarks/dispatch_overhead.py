"""Host cost of a kforge call against calling the implementation it serves directly, every op.

For each op, on a small input (its first smoke shape; `--dtype`), per call (median over `--repeat`
repeats of the mean of `--number` calls, microseconds):
  direct    the implementation the call is served by, called directly (vendor here: kforge's
            vendor function, what a miss serves and what a vendor record serves)
  served    the decision's function as the router calls it: `direct` plus what the op's contract
            adds per call (on a CPU, the index range checks of cross_entropy's target and
            rotary_embedding's positions: `check_values`; nothing on a GPU)
  public    the natural PyTorch spelling of the op (F.rms_norm, torch.softmax, ...), where one exists
  hit       kforge.ops.<op> on a key the table has a record for (a vendor record from
            `kforge.evaluate.calibrate`, so the served function is `direct`'s)
  miss      kforge.ops.<op> on a key with no record (served by vendor, counted for the miss log)
  pinned    kforge.ops.<op> under `kforge.use(op, "vendor")`
  torch_ops torch.ops.kforge.<op> (through the torch dispatcher)
  lookup    the routing lookup alone: the call key and the decision-cache lookup
  graph     (CUDA) one replay of a CUDA graph that captured `hit` against one of `direct`'s
Then overhead = hit - direct and miss - direct, and routing = hit - served (the router alone). The
same measured with the Python key (a child process with KFORGE_NATIVE=0), so the native key's gain
is in the same run. Goals (issue 18): overhead <= 1.0 us, lookup <= 0.3 us.

    python benchmarks/dispatch_overhead.py [--device cpu|cuda] [--number 20000] [--repeat 15]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import timeit

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, write_json  # noqa: E402

GOAL_OVERHEAD_US = 1.0
GOAL_LOOKUP_US = 0.3


def public_call(op: str, args: tuple):
    """The natural eager code for the op, or None where it has no one-line spelling."""
    if op == "rms_norm":
        x, w, eps = args
        return lambda: F.rms_norm(x, (x.shape[-1],), w, eps)
    if op == "fused_add_rms_norm":
        x, r, w, eps = args
        return lambda: (lambda h: (F.rms_norm(h, (h.shape[-1],), w, eps), h))(x + r)
    if op == "softmax":
        return lambda: torch.softmax(args[0], -1)
    if op == "silu_and_mul":
        x = args[0]
        return lambda: F.silu(x[..., : x.shape[-1] // 2]) * x[..., x.shape[-1] // 2:]
    if op == "layer_norm":
        x, w, b, eps = args
        return lambda: F.layer_norm(x, (x.shape[-1],), w, b, eps)
    if op == "gemv":
        return lambda: F.linear(*args)
    if op == "topk_softmax":
        x, k = args[0], args[1]
        return lambda: torch.topk(torch.softmax(x.float(), -1), k)
    return None


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


def graph_replay_us(fn, number: int, repeat: int) -> float:
    """One replay of a CUDA graph holding one call of `fn` (host and device, synchronized per batch)."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return per_call_us(graph.replay, number, repeat, torch.cuda.synchronize)


def measure(args) -> list[dict]:
    import kforge
    from kforge.evaluate.calibrate import calibrate
    from kforge.router import native
    from kforge.router.dispatch import ROUTER
    from kforge.router.table import ScoreTable

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for name in args.ops or sorted(kforge.ops.SPECS):
        spec = kforge.ops.SPECS[name]
        shape = spec.shape_sets["smoke"][0]
        hit_args = spec.make_inputs(shape, dtype, device, 0)
        miss_shape = (shape[0] + 1, *shape[1:])  # one more row: no record, and beyond the record's evidence
        miss_args = spec.make_inputs(miss_shape, dtype, device, 0)
        ScoreTable().write(calibrate(spec, shape, dtype, device, ["vendor"]))
        kforge.reset()
        entry, overload, route = kforge.ops.ENTRIES[name], getattr(torch.ops.kforge, name), ROUTER.ops[name]
        m = lambda fn: per_call_us(fn, args.number, args.repeat, sync)  # noqa: E731
        entry(*hit_args), entry(*miss_args)
        hit = route.decisions[route.signature(hit_args)]
        miss = route.decisions[route.signature(miss_args)]
        row = {"op": name, "shape": list(shape), "key": "native" if native.load() else "python",
               "hit_kind": hit.kind.value, "hit_impl": hit.impl, "miss_kind": miss.kind.value,
               "direct_us": m(lambda: spec.vendor(*hit_args)),
               "served_us": m(lambda: hit.fn(*hit_args)),
               "hit_us": m(lambda: entry(*hit_args)),
               "miss_direct_us": m(lambda: spec.vendor(*miss_args)),
               "miss_us": m(lambda: entry(*miss_args)),
               "torch_ops_us": m(lambda: overload(*hit_args)),
               "lookup_us": m(lambda: route.decisions.get(route.signature(hit_args)))}
        with kforge.use(name, "vendor"):
            row["pinned_us"] = m(lambda: entry(*hit_args))
        public = public_call(name, hit_args)
        row["public_us"] = m(public) if public else None
        if device.type == "cuda":
            row["graph_hit_us"] = graph_replay_us(lambda: entry(*hit_args), args.number // 10, args.repeat)
            row["graph_direct_us"] = graph_replay_us(lambda: spec.vendor(*hit_args), args.number // 10, args.repeat)
        row["hit_overhead_us"] = row["hit_us"] - row["direct_us"]
        row["routing_us"] = row["hit_us"] - row["served_us"]  # the router alone, without the contract's checks
        row["miss_overhead_us"] = row["miss_us"] - row["miss_direct_us"]
        row["pinned_overhead_us"] = row["pinned_us"] - row["direct_us"]
        row["meets_overhead_goal"] = max(row["hit_overhead_us"], row["miss_overhead_us"]) <= GOAL_OVERHEAD_US
        row["meets_lookup_goal"] = row["lookup_us"] <= GOAL_LOOKUP_US
        assert (row["hit_kind"], row["miss_kind"]) == ("hit", "miss"), row
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--ops", nargs="*", default=None)
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--out", default=None, help="JSON file name under benchmarks/results/")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # the Python-key run: rows on stdout
    args = parser.parse_args()
    os.environ["KFORGE_HOME"] = tempfile.mkdtemp(prefix="kforge-bench-")  # a table of this run's records only
    os.environ["KFORGE_BUNDLED_TABLE"] = "none"
    if args.child:
        print(json.dumps(measure(args)))
        return 0
    rows = measure(args)
    child = subprocess.run([sys.executable, *sys.argv, "--child"], capture_output=True, text=True,
                           env={**os.environ, "KFORGE_NATIVE": "0"})
    python_rows = json.loads(child.stdout) if child.returncode == 0 else []
    if child.returncode != 0:
        print(f"the Python-key run failed:\n{child.stderr[-2000:]}", file=sys.stderr)

    env = environment()
    payload = {"benchmark": "dispatch_overhead", "environment": env, "device": str(args.device), "dtype": args.dtype,
               "number": args.number, "repeat": args.repeat,
               "goals": {"overhead_us": GOAL_OVERHEAD_US, "lookup_us": GOAL_LOOKUP_US},
               "results": rows, "python_key_results": python_rows,
               "summary": {"ops": len(rows), "meet_overhead_goal": sum(r["meets_overhead_goal"] for r in rows),
                           "meet_lookup_goal": sum(r["meets_lookup_goal"] for r in rows)}}
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    host = "".join(c if c.isalnum() else "-" for c in env["cpu"])[:40].strip("-")
    path = write_json(args.out or f"dispatch_overhead-{kind}-{host}.json", payload)

    print(f"host {env['cpu']} | python {env['python']} | torch {env['torch']} | {args.device} {args.dtype}")
    print(f"{'op':19s} {'direct':>7s} {'hit':>7s} {'miss':>7s} {'pinned':>7s} {'t.ops':>7s} {'lookup':>7s} "
          f"{'hit-d':>6s} {'miss-d':>6s} {'py hit-d':>8s}")
    by_op = {r["op"]: r for r in python_rows}
    for r in rows:
        py = by_op.get(r["op"])
        print(f"{r['op']:19s} {r['direct_us']:7.2f} {r['hit_us']:7.2f} {r['miss_us']:7.2f} {r['pinned_us']:7.2f} "
              f"{r['torch_ops_us']:7.2f} {r['lookup_us']:7.2f} {r['hit_overhead_us']:6.2f} {r['miss_overhead_us']:6.2f} "
              f"{py['hit_overhead_us'] if py else float('nan'):8.2f}")
    print(f"goals: overhead <= {GOAL_OVERHEAD_US} us, lookup <= {GOAL_LOOKUP_US} us; met by "
          f"{payload['summary']['meet_overhead_goal']}/{len(rows)} and {payload['summary']['meet_lookup_goal']}/{len(rows)}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
