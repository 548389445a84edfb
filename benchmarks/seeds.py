"""Catalog seeds timed directly against the vendor op and torch.compile, without the harness.

`kforge bench` puts each seed through the whole harness (static checks, sandboxed verification on
every dtype and the secret shapes, then timing) before it records it; on the device tool's
10-minute calls that ran out of time for gemv, cross_entropy, rotary_embedding and silu_and_mul
(2026-11-30). This script answers the narrower question "how fast is each seed on the goal
shapes" in one short run: each seed file is loaded as a module, its output on each shape is
compared with the fp64 oracle (kforge.testing.compare), and the seeds, the vendor op and
torch.compile of the reference are timed together (device p50, L2 flushed). The numbers are
device times, not routed calls: they say what a table record of the seed would deliver, not
what `kforge.ops` costs the host.

    python benchmarks/seeds.py [--ops gemv cross_entropy ...] [--no-compile] [--gpu-dir h200]
    python benchmarks/seeds.py --report benchmarks/results/h200/seeds.json   # RESULTS.md section (CPU)
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The shapes the goals name, per op (bf16).
GOAL_SHAPES = {
    "gemv": [(1, 4096, 4096), (1, 4096, 6144), (1, 14336, 4096), (1, 4096, 28672), (1, 4096, 128256),
             (16, 4096, 4096), (64, 4096, 6144)],
    "cross_entropy": [(32, 151936), (8, 128256), (4096, 128256), (4096, 32000)],
    "layer_norm": [(32, 4096), (4096, 4096), (16384, 8192)],
    "rotary_embedding": [(32, 32, 8, 128), (4096, 32, 8, 128), (16384, 28, 4, 128)],
    "silu_and_mul": [(32, 14336), (4096, 14336), (8192, 14336)],
    # (tokens, hidden, inter, experts, k): Mixtral 8x7B and Qwen3-30B-A3B at decode and prefill.
    "fused_moe": [(1, 4096, 14336, 8, 2), (32, 4096, 14336, 8, 2), (4096, 4096, 14336, 8, 2),
                  (1, 2048, 768, 128, 8), (4096, 2048, 768, 128, 8)],
}


def hf_expert_loop(x, gate_up, down, topk_weights, topk_ids):
    """fused_moe as Hugging Face's eager experts compute it (transformers 5, MixtralExperts with
    experts_implementation="eager"): a one_hot mask of the routing, then per expert hit its tokens'
    gate_up, SwiGLU, down, weight, index_add into the output (bf16 roundings after each op, as
    there). transformers 5.2x's default, "grouped_mm", is the vendor's torch._grouped_mm spelling."""
    import torch
    import torch.nn.functional as F

    experts = gate_up.shape[0]
    out = torch.zeros_like(x)
    with torch.no_grad():
        mask = F.one_hot(topk_ids.long(), num_classes=experts).permute(2, 1, 0)  # (experts, k, tokens)
        hit = (mask.sum(dim=(-1, -2)) > 0).nonzero()
    for e in hit:
        e = e[0]
        slot, token = torch.where(mask[e])
        gate, up = F.linear(x[token], gate_up[e]).chunk(2, dim=-1)
        h = F.linear(F.silu(gate) * up, down[e]) * topk_weights[token, slot, None]
        out.index_add_(0, token, h.to(out.dtype))
    return out


# Baselines besides vendor and the compiled reference, per op: what a user of the op runs today.
EXTRA_BASELINES = {"fused_moe": {"hf_loop": hf_expert_loop}}
# Ops whose reference is no fair compile baseline (fused_moe's is dense: every expert on every
# token); the compile baseline is torch.compile of the first extra baseline instead.
COMPILE_EXTRA = {"fused_moe"}


def load_seed(path):
    spec = importlib.util.spec_from_file_location(f"kforge_seed_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _us(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def report(json_path: Path) -> int:
    """Replace the `<!-- seeds:begin -->` section of RESULTS.md with the run's table."""
    from ops_report import RESULTS_MD

    data = json.loads(json_path.read_text())
    env = data["environment"]
    begin, end = "<!-- seeds:begin -->", "<!-- seeds:end -->"
    lines = [begin, f"## Catalog seeds against vendor and torch.compile, device time (`benchmarks/seeds.py`, {env['gpu']})",
             "", f"{env['date']}; torch {env['torch']}, Triton {env['triton']}; bf16; copy ceiling "
             f"{data['copy_gbps']:.0f} GB/s; command `{env['command']}`; JSON `{json_path.name}`.",
             "Device p50 in microseconds, L2 flushed, no host cost (a routed call adds kforge's dispatch). "
             "Speedups are the best seed's over vendor and compile; `%ceil` is the best seed's bytes over its time.",
             "", "| op | shape | vendor | compile | seeds | best seed | vs vendor | vs compile | %ceil |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in data["rows"]:
        us, best = row["us"], row.get("best_seed")
        seeds_text = ", ".join(f"{n.removeprefix('seed:')} {u:.1f}" for n, u in us.items() if n.startswith("seed:"))
        speed = row.get("seed_speedup", {})
        lines.append(f"| {row['op']} | {'x'.join(map(str, row['shape']))} | {_us(us.get('vendor'))} | "
                     f"{_us(us.get('compile'))} | {seeds_text} | {(best or '-').removeprefix('seed:')} | "
                     f"{speed.get('vendor', '-')}x | {speed.get('compile', '-')}x | "
                     f"{row['frac_ceiling'][best]:.0%} |"
                     if best else f"| {row['op']} | {row['shape']} | no seed passed | | | | | | |")
        for name, message in row.get("errors", {}).items():
            lines.append(f"|  | {name} excluded: {message[:120]} | | | | | | | |")
    lines.append(end)
    section = "\n".join(lines) + "\n"
    text = RESULTS_MD.read_text()
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS_MD.write_text(text)
    print(f"updated {RESULTS_MD}")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--report"]:
        return report(Path(argv[1]))
    import torch

    import kforge
    from common import environment, write_json
    from kforge.catalog import seeds
    from kforge.evaluate import roofline, timing
    from kforge.testing import compare

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", nargs="*", default=list(GOAL_SHAPES))
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--gpu-dir", default="h200")
    parser.add_argument("--name", default="seeds.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/seeds.py times GPU kernels: no CUDA device here", file=sys.stderr)
        return 2
    ceiling = roofline.ceilings("cuda").copy_gbps
    rows = []
    for op in args.ops:
        spec = kforge.ops.get_spec(op)
        modules = {f"seed:{p.stem}": load_seed(p) for p in seeds(spec)}
        for shape in GOAL_SHAPES[op]:
            t0 = time.perf_counter()
            call = spec.make_inputs(shape, torch.bfloat16, "cuda", 0)
            problem = tuple(spec.problem(call))
            nbytes = spec.bytes_moved(problem, torch.bfloat16)
            extra = EXTRA_BASELINES.get(op, {})
            fns = {"vendor": spec.vendor, **extra, **{name: m.forward for name, m in modules.items()}}
            if not args.no_compile:
                torch._dynamo.reset()
                compiled = next(iter(extra.values())) if op in COMPILE_EXTRA else spec.reference
                fns["compile"] = torch.compile(compiled, dynamic=False)
            row = {"op": op, "shape": list(shape), "problem": list(problem), "bytes": nbytes, "us": {},
                   "frac_ceiling": {}, "errors": {}}
            for name, fn in list(fns.items()):
                try:
                    result = compare(spec, call, fn(*call))
                    ok, message = result.ok, result.message
                except Exception as exc:  # noqa: BLE001 - a seed outside its domain is reported, not fatal
                    ok, message = False, f"{type(exc).__name__}: {exc}"
                if not ok:
                    row["errors"][name] = message[:300]
                    del fns[name]
            timed = timing.time_together(fns, lambda i: spec.make_inputs(shape, torch.bfloat16, "cuda", i))
            for name in fns:
                us = timed[name].p50_us
                row["us"][name] = round(us, 3)
                row["frac_ceiling"][name] = round(nbytes / (us * 1e-6) / (ceiling * 1e9), 4)
            best_seed = min((n for n in row["us"] if n.startswith("seed:")), key=row["us"].get, default=None)
            if best_seed:
                row["best_seed"] = best_seed
                row["seed_speedup"] = {n: round(row["us"][n] / row["us"][best_seed], 3)
                                       for n in ("vendor", "compile", *extra) if n in row["us"]}
            rows.append(row)
            print(f"{op} {'x'.join(map(str, shape))}: " + "  ".join(f"{n} {u:.1f}" for n, u in row["us"].items())
                  + f"  best {best_seed} {row.get('seed_speedup')}  ({time.perf_counter() - t0:.1f} s)"
                  + (f"  errors {row['errors']}" if row["errors"] else ""), file=sys.stderr, flush=True)
            path = write_json(args.name, {"environment": environment(), "dtype": "bfloat16",
                                          "copy_gbps": ceiling, "rows": rows}, args.gpu_dir)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
