"""Issue 19's open question: is backend="kforge" (no rewrite: options={"ops": set()}) slower than
backend="inductor" on a Hugging Face Mixtral, or was the H200's 2.35 vs 1.60 ms the measurement?

One model, four compiles timed interleaved in one process (order rotated per repetition):
inductor, kforge with no rewrite, a bare `compile_fx` backend, and a second inductor as the control
(a no-op option, epilogue_fusion=True, forces a compile of its own: with identical options Dynamo
reuses the first entry). Per variant: first-call seconds, Dynamo/AOT/Inductor counters, the median
call, and whether the Inductor output code it runs is the inductor variant's (ids normalised).
On this CPU (torch 2.13 and 2.11, tiny widths) all four ran the same code, the same guards and
the same calls per step, within 2% of each other (2026-12-05). Not yet run on a GPU.

    python benchmarks/probes/compile_ab.py          # CPU, tiny widths
    python benchmarks/probes/compile_ab.py --gpu    # hidden 1024, 8 x 512 tokens, bf16
Env: SEPARATE=1 compiles deep copies instead of one shared module; DYN=false passes dynamic=False;
REPS (default 300); TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 to compile every variant from scratch.
"""
from __future__ import annotations

import copy
import json
import os
import re
import statistics
import sys
import time

import torch
from torch._dynamo.utils import counters
from torch._inductor import codecache
from torch._inductor.compile_fx import compile_fx


def build(gpu: bool):
    from transformers import AutoConfig, AutoModelForCausalLM

    dims = (dict(hidden_size=1024, intermediate_size=2816, num_attention_heads=16, num_key_value_heads=8, vocab_size=32000)
            if gpu else dict(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                             vocab_size=256))
    config = AutoConfig.for_model("mixtral", num_hidden_layers=2, num_local_experts=8, num_experts_per_tok=2, **dims)
    torch.manual_seed(0)
    device, dtype = ("cuda", torch.bfloat16) if gpu else ("cpu", torch.float32)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    ids = torch.randint(0, config.vocab_size, (8, 512) if gpu else (2, 64), device=device)
    return model, ids


def bare(gm, example_inputs):
    return compile_fx(gm, example_inputs)


VARIANTS = {"inductor": dict(backend="inductor"), "kforge": dict(backend="kforge", options={"ops": set()}),
            "custom": dict(backend=bare), "inductor2": dict(backend="inductor", options={"epilogue_fusion": True})}


def _normalised(path: str) -> str:
    text = re.sub(r"# AOT ID: .*", "", open(path).read())
    return re.sub(r"[a-z0-9]{52}|[0-9a-f]{32,}|/tmp/\S+", "H", text)


def main(argv: list[str]) -> int:
    gpu = "--gpu" in argv
    if not gpu:
        torch.set_num_threads(1)
    model, ids = build(gpu)
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    dynamic = {"false": False}.get(os.environ.get("DYN", ""), None)
    current, loaded = ["?"], {}
    load_by_key_path = codecache.PyCodeCache.load_by_key_path.__func__

    def load(cls, key, path, *args, **kwargs):  # which output-code file each variant's compile loads
        loaded.setdefault(current[0], []).append(path)
        return load_by_key_path(cls, key, path, *args, **kwargs)

    codecache.PyCodeCache.load_by_key_path = classmethod(load)
    compiled, info = {}, {}
    with torch.no_grad():
        for name, kwargs in VARIANTS.items():
            module = copy.deepcopy(model) if os.environ.get("SEPARATE") else model
            before = {group: dict(values) for group, values in counters.items()}
            current[0] = name
            compiled[name] = torch.compile(module, dynamic=dynamic, **kwargs)
            start = time.perf_counter()
            compiled[name](ids)
            sync()
            first = time.perf_counter() - start
            for _ in range(10):
                compiled[name](ids)
            sync()
            delta = {f"{g}.{k}": v - before.get(g, {}).get(k, 0)
                     for g in ("stats", "inductor", "aot_autograd", "recompiles", "graph_break") for k, v in counters[g].items()
                     if v - before.get(g, {}).get(k, 0) and ("cache" in k or g != "inductor")}
            info[name] = {"first_s": round(first, 1), "counters": delta}
        current[0] = "timing"
        times = {name: [] for name in compiled}
        order = list(compiled)
        for rep in range(int(os.environ.get("REPS", "300"))):
            for name in order[rep % len(order):] + order[:rep % len(order)]:
                sync()
                start = time.perf_counter()
                compiled[name](ids)
                sync()
                times[name].append(time.perf_counter() - start)
    codes = {name: [_normalised(p) for p in loaded.get(name) or []] for name in compiled}
    for name in compiled:
        info[name]["median_ms"] = round(statistics.median(times[name]) * 1e3, 3)
        info[name]["output_code_same_as_inductor"] = codes[name] == codes["inductor"]
        info[name]["output_code"] = [os.path.basename(p) for p in loaded.get(name) or []]
    print(json.dumps({"torch": torch.__version__, "device": "cuda" if gpu else "cpu",
                      "separate": bool(os.environ.get("SEPARATE")), "variants": info}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
