"""Probe: peak host memory of one verification at a prefill-like key, as a multiple of the input's
bytes (CPU, peak RSS): the verifier's own footprint, which decides whether a GPU worker's 70 GB
device-memory cap fits silu_and_mul 16384x29568 (x: 1.9 GB).

    python benchmarks/probes/verify_memory.py [ROWS] [--out FILE]

The candidate is torch's own silu_and_mul in fp32 (always accepted); the comparison's chunk is set to
2^20 elements so a CPU-sized key spans chunks as a prefill key does on the GPU (where available).
"""
import json
import resource
import sys
import time

import torch

import kforge.testing as testing
from kforge.evaluate.correctness import verify
from kforge.ops import SPECS

rows = int(sys.argv[1]) if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else 1024
if hasattr(testing, "CHUNK"):
    testing.CHUNK = 1 << 20
spec = SPECS["silu_and_mul"]


def forward(x):
    d = x.shape[-1] // 2
    return (torch.nn.functional.silu(x[..., :d].float()) * x[..., d:].float()).to(x.dtype)


base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.time()
verdict = verify(spec, forward, device="cpu", dtypes=[torch.bfloat16], shapes=[(rows, 29568)], secret_seed=1)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
x_bytes = rows * 29568 * 2 * 2
result = {"rows": rows, "d": 29568, "accepted": verdict.accepted, "input_mb": x_bytes >> 20,
          "peak_rss_mb": peak // 1024, "base_rss_mb": base // 1024,
          "peak_over_input": round((peak - base) * 1024 / x_bytes, 1), "seconds": round(time.time() - start, 1),
          "chunked": hasattr(testing, "CHUNK"), "torch": torch.__version__}
print(json.dumps(result))
if "--out" in sys.argv:
    with open(sys.argv[sys.argv.index("--out") + 1], "w") as f:
        json.dump(result, f, indent=1)
