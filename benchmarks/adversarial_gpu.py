"""The adversarial corpus (tests/adversarial) through the full harness on a GPU, plus what the
side-stream cheat does to timers that only record events on the current stream.

1. Every cheat goes through `evaluate_source(..., device="cuda")` (static checks, sandboxed
   worker, verification, timing) and must be rejected for its own reason: the check named in
   tests/test_adversarial.py (STATIC, DYNAMIC, GPU_ONLY).
2. side_stream.py, with the static check bypassed (loaded here directly): timed by
   `triton.testing.do_bench` (events on the current stream) and by kforge's timer, whose
   synchronized wall time exposes the escaped work (`timing.escaped_stream`).

    python benchmarks/adversarial_gpu.py [--only NAME ...] [--shard K/N]
Writes results/<h200|h100>/adversarial-gpu.json (with --shard: adversarial-gpu-K-of-N.json; the
honest seeds and the side-stream timing run in shard 1 only, each corpus file in one shard).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import environment, write_json  # noqa: E402

SHAPES = {"rms_norm": (64, 4096), "fused_add_rms_norm": (64, 4096), "softmax": (64, 4096)}


def timing_shape(op: str) -> tuple[int, ...]:
    """The timed shape of a cheat for `op`: a mid row shape, or the op's first smoke shape."""
    from kforge.ops import get_spec

    return SHAPES.get(op) or tuple(get_spec(op).shapes("smoke")[0])


def gpu_dir() -> str:
    """results/h200 or results/h100, from the GPU this runs on."""
    name = torch.cuda.get_device_name(0).lower()
    return "h200" if "h200" in name else "h100" if "h100" in name else "gpu"


def expectations() -> dict[str, tuple[str, str]]:
    """corpus file -> (op, the harness's `check` that must reject it)."""
    import test_adversarial as corpus

    out = {name: (op, f"static:{rule.value}") for name, (op, rule) in corpus.STATIC.items()}
    for table in (corpus.DYNAMIC, corpus.GPU_ONLY):
        out.update({name: (op, check.value) for name, (op, check, _, _) in table.items()})
    # Dynamic cheats the allow-list stops too: through the harness the static layer rejects them
    # first (tests/test_adversarial.py holds `verify` to its own check on each, on the CPU).
    out.update({name: (corpus.DYNAMIC[name][0], f"static:{rule.value}") for name, rule in corpus.ALSO_STATIC.items()})
    return out


# Honest seeds, evaluated as any candidate is (sandboxed worker, every check): must be accepted.
HONEST = {"rms_norm_rowwise": "rms_norm", "softmax_online": "softmax", "fused_add_rms_norm_rowwise": "fused_add_rms_norm"}


def run_honest(executor) -> list[dict]:
    from kforge.evaluate.harness import evaluate_source

    rows = []
    for name, op in HONEST.items():
        source = (HERE.parent / "src" / "kforge" / "catalog" / f"{name}.py").read_text()
        start = time.monotonic()
        result = evaluate_source(source, op, device="cuda", dtypes=[torch.bfloat16], timing_shapes=[timing_shape(op)],
                                 executor=executor, provider="seed", record=False, timeout_s=300.0)
        rows.append({"seed": name, "op": op, "verdict": result.verdict, "reason": result.reason[:400],
                     "seconds": round(time.monotonic() - start, 1)})
        print(f"honest {name:28s} {result.verdict:9s} {result.reason[:120]}", flush=True)
    return rows


def in_shard(index: int, shard: tuple[int, int]) -> bool:
    k, n = shard
    return index % n == k - 1


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes K/N (say 1/2), got {text!r}") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"--shard K/N needs 1 <= K <= N, got {text!r}")
    return k, n


def run_corpus(only: list[str], shard: tuple[int, int] = (1, 1)) -> list[dict]:
    from kforge.evaluate.executors import LocalPoolExecutor
    from kforge.evaluate.harness import evaluate_source
    from kforge.evaluate.static import check_source
    from kforge.ops import get_spec

    rows = []
    with LocalPoolExecutor() as executor:
        honest = run_honest(executor) if not only and shard[0] == 1 else []
        for index, (name, (op, expected)) in enumerate(sorted(expectations().items())):
            if (only and name not in only) or not in_shard(index, shard):
                continue
            source = (HERE.parent / "tests" / "adversarial" / f"{name}.py").read_text()
            start = time.monotonic()
            result = evaluate_source(source, op, device="cuda", dtypes=[torch.bfloat16, torch.float32],
                                     timing_shapes=[timing_shape(op)], executor=executor, provider="adversarial",
                                     record=False, timeout_s=120.0)
            if expected.startswith("static:"):
                # The harness reports the first finding; the cheat's own rule must be among them
                # (kills_process also imports os, patches_timer imports time, ...).
                rules = {f"static:{f.rule.value}" for f in check_source(source, get_spec(op))}
                ok = not result.accepted and str(result.check).startswith("static:") and expected in rules
            else:
                ok = not result.accepted and result.check == expected
            rows.append({"case": name, "op": op, "expected_check": expected, "verdict": result.verdict,
                         "check": result.check, "reason": result.reason[:400], "case_detail": result.case,
                         "rejected_for_its_reason": ok, "seconds": round(time.monotonic() - start, 1)})
            print(f"{name:24s} {result.verdict:9s} {str(result.check):28s} {'ok' if ok else 'MISMATCH'}", flush=True)
    return rows, honest


def side_stream() -> dict:
    import triton.testing

    from kforge.candidate import load_module
    from kforge.evaluate import roofline, timing
    from kforge.ops import get_spec

    spec = get_spec("softmax")
    module = load_module(HERE.parent / "tests" / "adversarial" / "side_stream.py", "kforge_bench_side_stream")
    shape = (4096, 4096)
    (x,) = spec.make_inputs(shape, torch.bfloat16, "cuda", 0)
    do_bench_us = {"side_stream": triton.testing.do_bench(lambda: module.forward(x)) * 1e3,
                   "vendor": triton.testing.do_bench(lambda: spec.vendor(x)) * 1e3}
    timed = timing.time_together({"side_stream": module.forward, "vendor": spec.vendor},
                                 lambda i: spec.make_inputs(shape, torch.bfloat16, "cuda", 100 + i))
    t = timed["side_stream"]
    # What the harness does next with such a time: the roofline floor (copy bandwidth) of moving
    # the op's bytes; beating it twice rejects the candidate (harness._beats_floor).
    ceilings = roofline.ceilings(torch.device("cuda"))
    result = roofline.classify(spec.bytes_moved(shape, torch.bfloat16), spec.flops(shape, torch.bfloat16),
                               t.p50_us, ceilings)
    return {"roofline_floor_us": result.floor_us, "beats_roofline_floor": roofline.implausible(t.p50_us, result.floor_us),
            "shape": list(shape), "dtype": "bfloat16",
            "do_bench_us": do_bench_us,
            "do_bench_speedup_claimed": do_bench_us["vendor"] / do_bench_us["side_stream"],
            "kforge_events_p50_us": t.p50_us, "kforge_wall_us": t.wall_us, "kforge_host_us": t.host_us,
            "vendor_p50_us": timed["vendor"].p50_us,
            "escaped_stream_detected": timing.escaped_stream(t)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--shard", type=parse_shard, default=(1, 1), metavar="K/N")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    os.environ.setdefault("KFORGE_HOME", tempfile.mkdtemp(prefix="kforge-adversarial-"))
    stream = side_stream() if args.shard[0] == 1 else None
    if stream is not None:
        print(f"side_stream: do_bench says {stream['do_bench_speedup_claimed']:.0f}x faster than vendor; kforge events "
              f"{stream['kforge_events_p50_us']:.1f} us, synchronized wall {stream['kforge_wall_us']:.1f} us, "
              f"escaped_stream={stream['escaped_stream_detected']}, roofline floor {stream['roofline_floor_us']:.1f} us, "
              f"beats it: {stream['beats_roofline_floor']}", flush=True)
    from kforge.evaluate.isolation import probe

    isolation = probe()
    print(f"isolation: {isolation.level.value} ({isolation.bwrap}, {isolation.version})", flush=True)
    rows, honest = run_corpus(args.only, args.shard)
    payload = {"benchmark": "adversarial_gpu", "environment": environment(), "corpus": rows,
               "isolation": {"level": isolation.level.value, "bwrap": isolation.bwrap, "version": isolation.version},
               "honest_seeds": honest, "all_honest_accepted": all(r["verdict"] == "accepted" for r in honest) if honest else None,
               "all_rejected_for_their_reason": all(r["rejected_for_its_reason"] for r in rows),
               "side_stream": stream, "shard": "{}/{}".format(*args.shard)}
    name = "adversarial-gpu.json" if args.shard == (1, 1) else "adversarial-gpu-{}-of-{}.json".format(*args.shard)
    path = write_json(name, payload, subdir=gpu_dir())
    print(f"{sum(r['rejected_for_its_reason'] for r in rows)}/{len(rows)} rejected for their reason; wrote {path}")
    return 0 if payload["all_rejected_for_their_reason"] and payload["all_honest_accepted"] is not False else 1


if __name__ == "__main__":
    raise SystemExit(main())
