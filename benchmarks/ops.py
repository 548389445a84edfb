"""Every kforge op on its GPU shape sets, against what a user would otherwise call, in one run.

Per op and shape (bf16 unless --dtype says otherwise), timed in the same process on the same GPU:
  eager    the op's reference: the natural PyTorch composition (fp32 statistics, as models write it)
  vendor   the op's vendor implementation: PyTorch's own fused op where one exists (torch.rms_norm,
           torch.layer_norm, softmax, F.cross_entropy, F.linear/cuBLAS); for the other ops the
           best eager composition (marked "fused": false)
  compile  torch.compile of the reference (Inductor, static shapes, default mode)
  kforge   kforge.ops.<op>, routed through the score table (bundled + user layers) as a user's
           call is: argument checks, key, decision cache and the chosen implementation's launch

Each implementation's output is first checked against the fp64 oracle (kforge.testing.compare).
Then two numbers per implementation:
  device_us  GPU time per call: device events around one call, L2 flushed before it, p50
             (kforge.evaluate.timing.time_together, all implementations interleaved)
  host_us    what one call costs the host in a loop of calls (kforge.evaluate.timing.host_cost)
and the comparison uses call_us = max(device_us, host_us): what a call costs in a stream of calls,
where a call the GPU finishes before the host can issue the next one is bound by the host.
Fractions of the copy ceiling (measured in the same run) are op bytes / device_us.

Shape classes for the bandwidth goals: "large" moves at least 4x the L2 size; below a quarter of
the L2 a call is launch-bound ("small") and has no bandwidth goal; in between, "short rows" have a
last problem dim of at most 512 elements and the rest is "mid" (ops_report.shape_class; the goals
and the summary are ops_report's too).

    python benchmarks/ops.py [--ops rms_norm softmax ...] [--sets decode prefill] [--dtype bf16]
                             [--gpu-dir h100] [--no-compile]
    python benchmarks/ops.py --report results/h200/ops-a.json [...]  # RESULTS.md section + plot (CPU)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ops_report import report, shape_class, summarize  # noqa: E402  (the report imports nothing of this file)

FUSED_VENDOR = {"rms_norm", "layer_norm", "softmax", "cross_entropy", "gemv"}
IMPLS = ("eager", "vendor", "compile", "kforge")
HOST_CALLS = 25


def _dtype(text: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(text) or getattr(torch, text)


def _routed_impl(op: str, fn, args) -> str:
    import kforge

    before = dict(kforge.stats()["ops"].get(op, {}).get("by_impl", {}))
    fn(*args)
    after = kforge.stats()["ops"].get(op, {}).get("by_impl", {})
    changed = [impl for impl, n in after.items() if n != before.get(impl, 0)]
    return changed[0] if changed else "?"


def _launch_modes(op: str) -> list[str]:
    """How each routing decision of `op` launches (the cached launcher's mode, and why not replay)."""
    from kforge.router.dispatch import ROUTER

    modes = []
    for decision in ROUTER.ops[op].decisions.values():
        state = getattr(decision.fn, "launch_state", None)
        modes.append(f"{decision.impl}: " + ("no launcher" if state is None else
                                            state.mode + (f" ({state.reason})" if state.reason else "")))
    return sorted(set(modes))


def bench_one(spec, shape, dtype, ceilings, l2_bytes: int, compile_ref: bool, compiled: dict | None = None) -> dict:
    """One row: every implementation checked, then timed together. compiled: torch.compile builds by
    (op, shape, dtype), re-used when present and filled when given (a second timing of a key)."""
    import torch

    import kforge
    from kforge.evaluate import timing
    from kforge.testing import compare

    device = "cuda"
    args = spec.make_inputs(shape, dtype, device, 0)
    problem = tuple(int(d) for d in spec.problem(args))
    nbytes = spec.bytes_moved(problem, dtype)
    fns = {"eager": spec.reference, "vendor": spec.vendor, "kforge": getattr(kforge.ops, spec.name)}
    row = {"op": spec.name, "shape": list(shape), "problem": list(problem), "dtype": str(dtype).removeprefix("torch."),
           "bytes": nbytes, "class": shape_class(spec, problem, nbytes, l2_bytes), "fused_vendor": spec.name in FUSED_VENDOR,
           "impls": {}, "errors": {}}
    built = None if compiled is None else compiled.get((spec.name, tuple(shape), dtype))
    if compile_ref and built is not None:
        fns["compile"] = built
    elif compile_ref:
        if compiled is None:  # else the earlier builds are kept (the caller raised the recompile limit)
            torch._dynamo.reset()
        build = torch.compile(spec.reference, dynamic=False)
        t0 = time.perf_counter()
        try:
            build(*args)
            fns["compile"] = build
            if compiled is not None:
                compiled[(spec.name, tuple(shape), dtype)] = build
        except Exception as exc:  # noqa: BLE001 - reported, not fatal: the other baselines still count
            row["errors"]["compile"] = f"{type(exc).__name__}: {exc}"[:300]
        row["compile_s"] = round(time.perf_counter() - t0, 2)
    row["routed_impl"] = _routed_impl(spec.name, fns["kforge"], args)
    for name, fn in list(fns.items()):
        result = compare(spec, args, fn(*args))
        if not result.ok:
            row["errors"][name] = result.message[:300]
            del fns[name]
    torch.cuda.synchronize()
    timed = timing.time_together(fns, lambda i: spec.make_inputs(shape, dtype, device, i))
    for name, fn in fns.items():
        device_us = timed[name].p50_us
        # 25 calls: timing.host_cost queues its loop behind a GPU sleep, and a loop of more launches
        # than the CUDA launch queue holds (~1000) blocks on it. The eager compositions launch 10 to
        # 15 kernels a call; at the default 100 calls their "host cost" read 14-28 ms (2026-11-22).
        host_us = timing.host_cost(fn, args, calls=HOST_CALLS)
        call_us = max(device_us, host_us)
        row["impls"][name] = {"device_us": round(device_us, 3), "host_us": round(host_us, 3),
                              "call_us": round(call_us, 3),
                              "frac_ceiling": round(nbytes / (device_us * 1e-6) / (ceilings.copy_gbps * 1e9), 4)}
    row["launch_modes"] = _launch_modes(spec.name)
    return row


def run(argv: list[str]) -> int:
    import torch

    import kforge
    from common import environment, write_json
    from kforge.evaluate import roofline

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", nargs="*", default=None)
    parser.add_argument("--sets", nargs="*", default=["decode", "prefill"])
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--gpu-dir", default="h100")
    parser.add_argument("--name", default="ops.json")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/ops.py times GPU calls: no CUDA device here (use --report to render results)", file=sys.stderr)
        return 2
    dtype = _dtype(args.dtype)
    ceilings = roofline.ceilings("cuda")
    l2_bytes = torch.cuda.get_device_properties(0).L2_cache_size
    rows: list[dict] = []
    payload, path = {"summary": {}}, None
    ops = args.ops or list(kforge.ops.SPECS)
    for op in ops:
        spec = kforge.ops.get_spec(op)
        for shape in spec.shapes(*[s for s in args.sets if s in spec.shape_sets]):
            t0 = time.perf_counter()
            row = bench_one(spec, shape, dtype, ceilings, l2_bytes, not args.no_compile)
            rows.append(row)
            line = "  ".join(f"{n} {v['call_us']:.1f}" for n, v in row["impls"].items())
            print(f"{op} {'x'.join(map(str, shape))} [{row['routed_impl']}] {line}  ({time.perf_counter() - t0:.1f} s) "
                  f"{row['launch_modes']}"
                  + (f"  errors: {row['errors']}" if row["errors"] else ""), file=sys.stderr, flush=True)
            # Written after every shape: a run cut short by its time limit keeps what it measured.
            payload = {"environment": environment(), "dtype": args.dtype, "sets": args.sets,
                       "ceilings": {"copy_gbps": ceilings.copy_gbps, "l2_bytes": l2_bytes}, "rows": rows,
                       "summary": summarize(rows)}
            path = write_json(args.name, payload, args.gpu_dir)
    print(json.dumps(payload["summary"], indent=1))
    print(f"wrote {path}", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--report"]:
        return report([Path(a) for a in argv[1:]])
    return run(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
