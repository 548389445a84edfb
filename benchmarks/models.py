"""Hugging Face models end to end (issue 19): tokens per second, eager, eager + `kforge.patch`,
backend="inductor" and backend="kforge" (each compiled also with mode="reduce-overhead", CUDA graphs),
and a control: a second, identical eager model timed in the same run (how far two identical
configurations differ here: a ratio inside the control's spread is no difference).

Models are built from configs with random weights (no hub), bf16, at real widths; the layer count
is reduced (--layers, default 4) to bound memory and compile time, and said in the JSON:
  llama3-8b   hidden 4096, 32 heads, 8 KV heads, intermediate 14336, vocab 128256
  qwen2.5-7b  hidden 3584, 28 heads, 4 KV heads, intermediate 18944, vocab 152064
  mixtral     hidden 4096, 32 heads, 8 KV heads, 8 experts top-2, intermediate 14336, vocab 32000
Regimes: decode at batch 1, 8, 32 (a static KV cache of --context + steps positions; each timed
call is `--steps` decode steps, tokens/s = batch * steps / seconds) and prefill 1 x 2048 and
8 x 512 (one forward, no cache). The variants are timed interleaved, the order rotated per
repetition, CUDA synchronised around each timed call; the median of --reps is reported with
min/max. Accuracy: each variant's prefill logits against eager's (max |diff| over max |eager|).

    python benchmarks/models.py --out $OUT/models.json                       # the GPU run
    python benchmarks/models.py --models llama3-8b --regimes decode1 --variants eager,patch,control
    python benchmarks/models.py --smoke --out /tmp/models-smoke.json         # CPU, tiny widths
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import environment  # noqa: E402

CONFIGS = {
    "llama3-8b": dict(model_type="llama", hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=14336, vocab_size=128256, rope_theta=500000.0, rms_norm_eps=1e-5),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, num_attention_heads=28, num_key_value_heads=4,
                       intermediate_size=18944, vocab_size=152064, rope_theta=1000000.0, rms_norm_eps=1e-6),
    "mixtral": dict(model_type="mixtral", hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                    intermediate_size=14336, vocab_size=32000, num_local_experts=8, num_experts_per_tok=2,
                    rope_theta=1000000.0, rms_norm_eps=1e-5),
}
SMOKE = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, vocab_size=256)
REGIMES = {"decode1": ("decode", 1, 1), "decode8": ("decode", 8, 1), "decode32": ("decode", 32, 1),
           "prefill1x2048": ("prefill", 1, 2048), "prefill8x512": ("prefill", 8, 512)}
VARIANTS = ("eager", "patch", "control", "inductor", "kforge", "inductor-cg", "kforge-cg")


def build(name: str, layers: int, smoke: bool, device: str, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(CONFIGS[name])
    model_type = spec.pop("model_type")
    if smoke:
        spec.update(SMOKE)
    config = AutoConfig.for_model(model_type, num_hidden_layers=layers, max_position_embeddings=8192, **spec)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def variant(name: str, base, patched, control):
    """The module a variant calls (compiled lazily: the first call traces and compiles)."""
    if name == "eager":
        return base
    if name == "patch":
        return patched
    if name == "control":
        return control
    backend = "kforge" if name.startswith("kforge") else "inductor"
    mode = "reduce-overhead" if name.endswith("-cg") else None
    return torch.compile(base, backend=backend, mode=mode, dynamic=False)


def static_cache(model, batch: int, length: int, device: str, dtype: torch.dtype):
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=length)


def rewind(cache, context: int) -> None:
    """Empty a static cache and place its write position at `context` (untimed, before each call).
    transformers 5.2x's static layers keep their own write position (`cumulative_length`) and
    ignore cache_position; earlier ones write where cache_position says."""
    cache.reset()
    for layer in getattr(cache, "layers", ()):
        length = getattr(layer, "cumulative_length", None)
        if isinstance(length, torch.Tensor):
            length.fill_(context)


def measure(call, sync) -> float:
    prepare = getattr(call, "prepare", None)
    if prepare is not None:
        prepare()
    sync()
    start = time.perf_counter()
    call()
    sync()
    return time.perf_counter() - start


def bench(name: str, args, device: str, dtype: torch.dtype, log) -> dict:
    import kforge

    base = build(name, args.layers, args.smoke, device, dtype)
    patched = copy.deepcopy(base)
    report = kforge.patch(patched)
    control = copy.deepcopy(base)
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    out = {"model": name, "layers": args.layers, "config": base.config.to_diff_dict(), "patch": report.to_dict(),
           "regimes": {}}
    for regime in args.regimes:
        kind, batch, seq = REGIMES[regime]
        if args.smoke:
            seq = min(seq, 32)
        fns, times, errors, accuracy = {}, {v: [] for v in args.variants}, {}, {}
        gen = torch.Generator(device="cpu").manual_seed(1)
        if kind == "prefill":
            ids = torch.randint(0, base.config.vocab_size, (batch, seq), generator=gen).to(device)
            calls = {}
            for v in args.variants:
                module = variant(v, base, patched, control)
                calls[v] = (lambda m=module: m(input_ids=ids, use_cache=False).logits)
            tokens = batch * seq
        else:
            ids = torch.randint(0, base.config.vocab_size, (batch, 1), generator=gen).to(device)
            calls = {}
            for v in args.variants:
                module = variant(v, base, patched, control)
                cache = static_cache(base, batch, args.context + args.steps, device, dtype)
                positions = [torch.tensor([args.context + i], device=device) for i in range(args.steps)]

                def steps(m=module, cache=cache, positions=positions):
                    for pos in positions:
                        logits = m(input_ids=ids, past_key_values=cache, cache_position=pos, use_cache=True).logits
                    return logits
                steps.prepare = (lambda cache=cache: rewind(cache, args.context))
                calls[v] = steps
            tokens = batch * args.steps
        with torch.inference_mode():
            reference = None
            for v, call in list(calls.items()):
                start = time.perf_counter()
                try:
                    for _ in range(args.warmup):
                        if hasattr(call, "prepare"):
                            call.prepare()
                        result = call()
                    sync()
                except Exception as err:  # noqa: BLE001 - one variant failing is a result, not the end of the run
                    errors[v] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                    calls.pop(v)
                    log(f"{name} {regime} {v}: failed: {errors[v]}")
                    continue
                log(f"{name} {regime} {v}: warm-up {time.perf_counter() - start:.1f} s")
                if v == "eager":
                    reference = result.float()
                fns[v] = result
            for v, result in fns.items():
                if reference is not None and kind == "prefill":
                    accuracy[v] = float((result.float() - reference).abs().max() / reference.abs().max())
            order = list(calls)
            for rep in range(args.reps):
                for v in order[rep % len(order):] + order[:rep % len(order)]:
                    times[v].append(measure(calls[v], sync))
        row = {"kind": kind, "batch": batch, "seq": seq, "tokens_per_call": tokens, "errors": errors,
               "accuracy_vs_eager": accuracy, "variants": {}}
        for v, ts in times.items():
            if ts:
                p50 = statistics.median(ts)
                row["variants"][v] = {"seconds_p50": p50, "seconds_min": min(ts), "seconds_max": max(ts),
                                      "tokens_per_s": tokens / p50, "reps": len(ts)}
        got = row["variants"]
        row["ratios"] = {f"{a}/{b}": got[a]["tokens_per_s"] / got[b]["tokens_per_s"]
                         for a, b in (("patch", "eager"), ("control", "eager"), ("kforge", "inductor"),
                                      ("kforge-cg", "inductor-cg"), ("patch", "inductor"))
                         if a in got and b in got}
        log(f"{name} {regime}: " + ", ".join(f"{k} {r:.3f}x" for k, r in row["ratios"].items()))
        out["regimes"][regime] = row
        torch._dynamo.reset()
    out["kforge_stats"] = kforge.stats()  # the patched variant's (and backend="kforge"'s) routed calls
    return out


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CONFIGS))
    parser.add_argument("--regimes", default=",".join(REGIMES))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--context", type=int, default=512, help="decode: the cache positions already filled")
    parser.add_argument("--steps", type=int, default=16, help="decode: steps per timed call")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=540.0, help="no new model after this")
    parser.add_argument("--smoke", action="store_true", help="tiny widths on this machine's device")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.models, args.regimes = args.models.split(","), args.regimes.split(",")
    args.variants = args.variants.split(",")
    for given, known, what in ((args.models, CONFIGS, "model"), (args.regimes, REGIMES, "regime"),
                               (args.variants, VARIANTS, "variant")):
        unknown = [g for g in given if g not in known]
        if unknown:
            parser.error(f"unknown {what}(s) {unknown}; known: {', '.join(known)}")
    if "eager" not in args.variants:
        args.variants.insert(0, "eager")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    t0 = time.time()

    def log(text: str) -> None:
        print(f"[{time.time() - t0:6.1f}s] {text}", file=sys.stderr, flush=True)

    payload = {"environment": environment(), "device": device, "dtype": str(dtype), "smoke": args.smoke,
               "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "models": []}
    for name in args.models:
        if time.time() - t0 > args.max_seconds:
            payload.setdefault("skipped", []).append(name)
            log(f"{name}: skipped (--max-seconds)")
            continue
        payload["models"].append(bench(name, args, device, dtype, log))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")  # what is done is kept
        torch.cuda.empty_cache() if device == "cuda" else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
