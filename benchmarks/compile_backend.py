"""Whole model blocks under torch.compile: eager, backend="inductor" and backend="kforge", in one run.

The blocks are the models of kforge/compile/models.py, in bf16 under torch.no_grad():
  llama  LlamaBlocks with Llama-3-8B widths (hidden 4096, 32 heads, 8 KV heads, intermediate 14336)
         and one decoder layer (+ the final norm): the layer has every pattern the backend knows
         (HF RMSNorm, residual add + norm, rotary, fused gate/up SwiGLU); each extra layer repeats
         them and adds compile time. 218M parameters, 436 MB of weights.
  moe    MoEBlock with Mixtral-8x7B widths (hidden 4096, 8 experts, top-2, intermediate 14336),
         experts computed densely (every token through every expert, so shapes are static): 2.8 GB
         of weights; 4096 prefill tokens are 11.5 TFLOP (4x the sparse block's, ~20 ms) and ~5 GB
         of activations in eager: well under 40 GB with both CUDA-graph pools and the fp32 reference.
         Mixtral's own widths keep the rewritten ops on shapes the score table was built for
         (router softmax/top-k over 8 experts, silu_and_mul rows of 14336).
Sizes: llama decode batch 1 and 8 at seq 1 (the blocks have no KV cache: a decode step here is the
weight-bound part, projections, norms, rotary and MLP), prefill batch 1 x seq 2048; moe decode 1 and
32 tokens, prefill 4096 tokens.

Per (block, size), after `torch._dynamo.reset()`: the model compiled with each backend in each mode
(default, and "reduce-overhead" = CUDA graphs), all kept alive and timed interleaved with eager
(order rotated per repetition), static shapes (dynamic=False). Per implementation:
  call_us    p50 per call of a batch of back-to-back calls from an idle GPU (CUDA events around the
             batch; what a model calling the block pays: host-bound calls show their host cost)
  device_us  p50 of one call queued behind a GPU sleep (device time only: kernel quality)
  host_us    host time per call (kforge.evaluate.timing.host_cost)
  compile_s  the first call (trace + compile); cudagraph_skips: Inductor's counter for the compile
Ratios are times, kforge over baseline per mode (< 1: kforge faster). Accuracy: max |difference|
of each output against an fp32 eager run of the same (bf16-valued) weights, and kforge against
inductor next to inductor against eager (how far compiling alone moves the output). The rewrites:
`kforge.explain(model, *inputs).to_dict()` per size.

    python benchmarks/compile_backend.py --blocks llama --out $OUT/compile_backend-llama.json
    python benchmarks/compile_backend.py --smoke --out /tmp/smoke.json   # CPU, tiny dims
    python benchmarks/compile_backend.py --report a.json [b.json ...]   # RESULTS.md section (CPU)
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from compile_backend_report import markdown, report, summarize  # noqa: E402  (the report imports nothing of this file)

BLOCKS = {  # constructor arguments of kforge.compile.models's classes
    "llama": {"full": dict(hidden=4096, heads=32, kv_heads=8, intermediate=14336, layers=1),
              "smoke": dict(hidden=64, heads=4, kv_heads=2, intermediate=128, layers=1)},
    "moe": {"full": dict(hidden=4096, experts=8, top_k=2, intermediate=14336),
            "smoke": dict(hidden=64, experts=8, top_k=2, intermediate=96)},
}
SIZES = {  # llama: (batch, seq); moe: (tokens,)
    "full": {"llama": {"decode": [(1, 1), (8, 1)], "prefill": [(1, 2048)]},
             "moe": {"decode": [(1,), (32,)], "prefill": [(4096,)]}},
    "smoke": {"llama": {"decode": [(2, 1)], "prefill": [(1, 16)]},
              "moe": {"decode": [(4,)], "prefill": [(32,)]}},
}
DECODE_POSITION = 1023  # a decode token's position: rotary angles away from the trivial position 0
# control: the kforge backend with no rewrites (options ops=[]): the same code path and the same
# graph as Inductor's. Its difference from inductor is the measurement's floor: in the first H200
# runs identical graphs differed by up to 12% in call time (host-bound decode), 1% in device time.
BACKENDS = ("inductor", "control", "kforge")
WARMUP = 5  # calls after the compiling one: CUDA graph trees run eagerly once, record, then replay
STREAM_US = 3000.0  # length of one back-to-back batch
STREAM_CALLS = (2, 50)
HOST_CALLS = 10  # under the CUDA launch queue (~1000 launches) even for the eager block's ~45 a call
PAD_MARGIN_US = 20.0


def _log(t0: float, text: str) -> None:
    print(f"[{time.perf_counter() - t0:6.1f} s] {text}", file=sys.stderr, flush=True)


def _finite(x: float):
    return round(x, 6) if math.isfinite(x) else str(x)  # JSON has no NaN


def _one_line(exc: Exception) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:400]  # Dynamo's messages span lines


def build(block: str, dims: dict, device: str):
    import torch
    from kforge.compile.models import LlamaBlocks, MoEBlock

    torch.manual_seed(0)
    with torch.device(device):  # parameters born on the GPU: Mixtral's 1.4G fp32 randn takes ~10 s on a CPU
        model = (LlamaBlocks if block == "llama" else MoEBlock)(**dims)
    return model.to(torch.bfloat16).eval()


def make_inputs(block: str, dims: dict, size: tuple, device: str, seed: int = 0) -> tuple:
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    if block == "moe":
        return (torch.randn(size[0], dims["hidden"], generator=g, device=device, dtype=torch.bfloat16),)
    batch, seq = size
    x = torch.randn(batch, seq, dims["hidden"], generator=g, device=device, dtype=torch.bfloat16)
    positions = torch.arange(seq, device=device) + (DECODE_POSITION if seq == 1 else 0)
    return x, positions.expand(batch, seq).contiguous()  # (batch, seq) int64


def _backend(name: str, on_miss: str | None):
    """What torch.compile gets: the registered name where it can (a user's spelling); the function
    itself when the entry point is missing (PYTHONPATH=src) or options are needed, since torch.compile
    refuses `mode` and `options` together."""
    from torch._dynamo.backends.registry import lookup_backend

    if name == "inductor":
        return name
    if name == "control":
        import functools

        from kforge.compile import kforge_backend

        return functools.partial(kforge_backend, options={"ops": []})
    if on_miss is None:
        try:
            lookup_backend("kforge")
            return "kforge"
        except Exception:  # noqa: BLE001 - not installed: PYTHONPATH=src has no entry points
            pass
    import functools

    from kforge.compile import kforge_backend

    return functools.partial(kforge_backend, options={"on_miss": on_miss}) if on_miss else kforge_backend


class _Rewrites(logging.Handler):
    """The ops the kforge backend rewrote in the compiles it ran: it logs one record per
    candidate (`kforge.compile: rewrote <op> at <where>: <reason>`)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.ops: Counter = Counter()
        logger = logging.getLogger("kforge.compile")
        logger.setLevel(logging.INFO)  # no handler up the tree prints INFO: nothing reaches the console
        logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.args, tuple) and len(record.args) == 4 and record.args[0] == "rewrote":
            self.ops[record.args[1]] += 1


def compile_all(model, args: tuple, modes: list[str], on_miss, t0: float, deadline: float, label: str):
    """{name: compiled callable} for every backend and mode, plus {name: info} (compile time,
    CUDA graph skips, ops rewritten, error)."""
    import torch
    from torch._dynamo.utils import counters

    fns, info = {"eager": model}, {"eager": {}}
    rewrites = _Rewrites()
    for mode in modes:
        for backend in BACKENDS:
            name = f"{backend}/{mode}"
            if time.perf_counter() > deadline:
                info[name] = {"error": "skipped: time budget"}
                continue
            skips = counters["inductor"]["cudagraph_skips"]
            rewrites.ops.clear()
            start = time.perf_counter()
            try:
                fn = torch.compile(model, backend=_backend(backend, on_miss), mode=mode, dynamic=False)
                fn(*args)
                compile_s = time.perf_counter() - start
                for _ in range(WARMUP):
                    fn(*args)
                fns[name] = fn
                info[name] = {"compile_s": round(compile_s, 2),
                              "cudagraph_skips": counters["inductor"]["cudagraph_skips"] - skips}
                if backend == "kforge":
                    info[name]["rewrote"] = dict(rewrites.ops)
            except Exception as exc:  # noqa: BLE001 - reported, not fatal: the other configurations still count
                info[name] = {"error": _one_line(exc)}
            _log(t0, f"{label} {name}: " + (f"compiled in {info[name]['compile_s']} s" if "compile_s" in info[name]
                                            else info[name]["error"][:200])
                 + (f", rewrote {info[name]['rewrote'] or 'nothing'}" if "rewrote" in info[name] else ""))
    logging.getLogger("kforge.compile").removeHandler(rewrites)
    return fns, info


def accuracy(model, fns: dict, args: tuple, modes: list[str]) -> dict:
    """Max |difference| of each output against fp32 eager (same bf16-valued weights), and kforge
    against inductor beside inductor against eager, per mode."""
    ref_model = copy.deepcopy(model).float()
    ref = ref_model(*[a.float() if a.is_floating_point() else a for a in args]).float()
    del ref_model
    outs = {name: fn(*args).detach().float().clone() for name, fn in fns.items()}  # clone: graph outputs are reused

    def diff(a, b) -> float:
        return _finite((a - b).abs().max().item())

    result = {"ref_abs_max": _finite(ref.abs().max().item()),
              "err_vs_fp32": {name: diff(out, ref) for name, out in outs.items()}, "modes": {}}
    for mode in modes:
        kf, ind = outs.get(f"kforge/{mode}"), outs.get(f"inductor/{mode}")
        if kf is not None and ind is not None:
            result["modes"][mode] = {"kforge_vs_inductor": diff(kf, ind), "inductor_vs_eager": diff(ind, outs["eager"]),
                                     "kforge_vs_eager": diff(kf, outs["eager"])}
    return result


def time_all(fns: dict, args: tuple, reps: int, cuda: bool) -> dict:
    """call_us, device_us and host_us per function, interleaved (see the module docstring)."""
    import torch

    from kforge.evaluate import timing
    from kforge.evaluate.timing.clock import sleep_cycles  # the project's sleep calibration
    from kforge.evaluate.timing.inputs import quantiles

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    calls, host, pads = {}, {}, {}
    for name, fn in fns.items():
        sync()
        start = time.perf_counter()
        for _ in range(3):
            fn(*args)
        sync()
        estimate = (time.perf_counter() - start) / 3 * 1e6
        calls[name] = min(max(math.ceil(STREAM_US / estimate), STREAM_CALLS[0]), STREAM_CALLS[1])
        if cuda:
            host[name] = timing.host_cost(fn, args, calls=HOST_CALLS)
            pads[name] = sleep_cycles(args[0].device, 2 * host[name] + PAD_MARGIN_US)
    stream = {name: [] for name in fns}
    device = {name: [] for name in fns}
    for r in range(reps):
        items = list(fns.items())
        for name, fn in items[r % len(items):] + items[:r % len(items)]:
            sync()
            if not cuda:
                start = time.perf_counter()
                for _ in range(calls[name]):
                    fn(*args)
                stream[name].append((time.perf_counter() - start) * 1e6 / calls[name])
                continue
            pair = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            pair[0].record()
            for _ in range(calls[name]):
                fn(*args)
            pair[1].record()
            stream[name].append(pair)
            torch.cuda._sleep(pads[name])  # covers the host's issuing of the call: the events see device time
            pair = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            pair[0].record()
            fn(*args)
            pair[1].record()
            device[name].append(pair)
    sync()
    result = {}
    for name in fns:
        per_call = [p if not cuda else p[0].elapsed_time(p[1]) * 1e3 / calls[name] for p in stream[name]]
        p20, p50, p80 = quantiles(per_call)
        row = {"call_us": round(p50, 2), "call_p20_us": round(p20, 2), "call_p80_us": round(p80, 2),
               "calls_per_batch": calls[name]}
        if cuda:
            row["device_us"] = round(quantiles([s.elapsed_time(e) * 1e3 for s, e in device[name]])[1], 2)
            row["host_us"] = round(host[name], 2)
        result[name] = row
    return result


def ratios(impls: dict, modes: list[str]) -> dict:
    """Time ratios per mode (< 1: the numerator is faster), by call_us and by device_us."""
    out = {}
    for mode in modes:
        kf, ind, eager = impls.get(f"kforge/{mode}", {}), impls.get(f"inductor/{mode}", {}), impls.get("eager", {})
        control = impls.get(f"control/{mode}", {})
        r = {}
        for key, suffix in (("call_us", ""), ("device_us", " device")):
            if key in kf and key in control:
                r["kforge/control" + suffix] = round(kf[key] / control[key], 4)
            if key in control and key in ind:
                r["control/inductor" + suffix] = round(control[key] / ind[key], 4)
            if key in kf and key in ind:
                r["kforge/inductor" + suffix] = round(kf[key] / ind[key], 4)
            if key in kf and key in eager:
                r["kforge/eager" + suffix] = round(kf[key] / eager[key], 4)
            if key in ind and key in eager:
                r["inductor/eager" + suffix] = round(ind[key] / eager[key], 4)
        out[mode] = r
    return out


def bench_size(block, dims, model, set_name, size, modes, args_ns, device, t0, deadline) -> dict:
    """One (block, size): explain, compile every configuration, check outputs, time them together."""
    import torch

    import kforge

    label = f"{block} {set_name} {'x'.join(map(str, size))}"
    start = time.perf_counter()
    torch._dynamo.reset()
    args = make_inputs(block, dims, size, device)
    row = {"block": block, "set": set_name, "size": list(size), "input_shapes": [list(a.shape) for a in args],
           "rewritten_ops": {}, "impls": {}, "accuracy": {"modes": {}}, "ratios": {}}
    fns = {}
    try:  # an error (out of memory, a compiled graph failing at run time) costs this size, not the run
        options = {"on_miss": args_ns.on_miss} if args_ns.on_miss else None
        row["explain"] = kforge.explain(model, *args, options=options).to_dict()  # as mode="default" plans
        row["rewritten_ops"] = dict(Counter(e["op"] for e in row["explain"]["entries"] if e["rewritten"]))
        _log(t0, f"{label}: kforge.explain rewrote {row['rewritten_ops'] or 'nothing'}")
        fns, info = compile_all(model, args, modes, args_ns.on_miss, t0, deadline, label)
        row["impls"] = info
        row["accuracy"] = accuracy(model, fns, args, modes)
        for name, timed in time_all(fns, args, args_ns.reps, device == "cuda").items():
            row["impls"][name].update(timed)
        row["ratios"] = ratios(row["impls"], modes)
        _log(t0, f"{label}: " + "  ".join(f"{n} {v['call_us']:.1f} us" for n, v in row["impls"].items()
                                          if "call_us" in v) + f"  {row['ratios']}")
    except Exception as exc:  # noqa: BLE001 - reported in the row and the table
        row["error"] = _one_line(exc)
        _log(t0, f"{label}: {row['error']}")
    finally:
        row["seconds"] = round(time.perf_counter() - start, 1)
        fns.clear()
        torch._dynamo.reset()
        try:  # the CUDA graph pools of this size's compiled functions
            from torch._inductor.cudagraph_trees import reset_cudagraph_trees

            reset_cudagraph_trees()
        except Exception:  # noqa: BLE001 - only memory is at stake
            pass
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return row


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", nargs="*", default=list(BLOCKS), choices=list(BLOCKS))
    parser.add_argument("--sizes", nargs="*", default=["decode", "prefill"], choices=["decode", "prefill"])
    parser.add_argument("--modes", nargs="*", default=["default", "reduce-overhead"])
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default results/<h200|dev-cpu>/...)")
    parser.add_argument("--json", action="store_true", help="print the result JSON instead of the table")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny dims, one size per set")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per implementation (20; smoke 5)")
    parser.add_argument("--llama-layers", type=int, default=None)
    parser.add_argument("--on-miss", choices=["inductor", "kforge"], default=None,
                        help="kforge backend option (default: the backend's own, 'inductor')")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no compile after this many seconds")
    args = parser.parse_args(argv)
    # An empty user layer: the bundled table decides, not whatever an earlier run left in ~/.kforge.
    os.environ.setdefault("KFORGE_HOME", tempfile.mkdtemp(prefix="kforge-compile-bench-"))

    import torch

    from common import RESULTS, environment

    t0 = time.perf_counter()
    scale = "smoke" if args.smoke else "full"
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/compile_backend.py times GPU blocks: no CUDA device here (--smoke runs on the CPU)",
              file=sys.stderr)
        return 2
    args.reps = args.reps or (5 if args.smoke else 20)
    if device == "cpu":
        # One intra-op thread: on a loaded 2-core box OpenMP threads waiting for each other turned a
        # 0.5 ms tiny-block call into 100 ms (2026-11-30). CPU numbers only prove the script runs.
        torch.set_num_threads(1)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)  # 4 compiles + explain per size
    out = args.out or RESULTS / ("dev-cpu" if args.smoke else "h200") / f"compile_backend-{'-'.join(args.blocks)}.json"
    payload = {"environment": environment(), "device": device, "dtype": "bfloat16", "smoke": args.smoke,
               "modes": args.modes, "on_miss": args.on_miss, "reps": args.reps,
               "kforge_env": {k: os.environ.get(k) for k in ("KFORGE_HOME", "KFORGE_TABLE", "KFORGE_BUNDLED_TABLE")},
               "backend_arg": str(_backend("kforge", args.on_miss)), "blocks": {}, "rows": [], "skipped": []}
    deadline = t0 + args.budget_s
    with torch.no_grad():
        for block in args.blocks:
            dims = dict(BLOCKS[block][scale])
            if block == "llama" and args.llama_layers:
                dims["layers"] = args.llama_layers
            model = build(block, dims, device)
            payload["blocks"][block] = {"class": type(model).__name__, "dims": dims,
                                        "params": sum(p.numel() for p in model.parameters()),
                                        "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}
            _log(t0, f"{block}: {type(model).__name__}({dims}) on {device}")
            for set_name in args.sizes:
                for size in SIZES[scale][block][set_name]:
                    if time.perf_counter() > deadline:
                        payload["skipped"].append({"block": block, "set": set_name, "size": list(size),
                                                   "why": f"time budget ({args.budget_s:.0f} s) spent"})
                        _log(t0, f"{block} {set_name} {size}: skipped, time budget spent")
                        continue
                    row = bench_size(block, dims, model, set_name, size, args.modes, args, device, t0, deadline)
                    payload["rows"].append(row)
                    payload["summary"] = summarize(payload["rows"])
                    # Written after every size: a run cut short by the device tool's limit keeps what it measured.
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
            del model
    payload["summary"] = summarize(payload["rows"])
    payload["total_s"] = round(time.perf_counter() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    print(json.dumps(payload, indent=1, sort_keys=True) if args.json else markdown(payload, [out]))
    _log(t0, f"wrote {out}")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--report"]:
        parser = argparse.ArgumentParser(prog="compile_backend.py --report")
        parser.add_argument("json", nargs="+", type=Path)
        parser.add_argument("--results-md", type=Path, default=HERE / "RESULTS.md")
        ns = parser.parse_args(argv[1:])
        return report(ns.json, ns.results_md)
    return run(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
