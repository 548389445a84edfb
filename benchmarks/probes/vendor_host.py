"""Which calls synchronize the host with the GPU, and what each costs on the host (issue 18: the
rotary_embedding vendor took 168-336 us per call on the H200 host where its device time is ~3 us).

For each op at its first decode shape (bf16, cuda): the vendor function and the routed
`kforge.ops.<op>` (after three calls: a Triton decision's second call records its launches and
compares a replay with them, which synchronizes once) run once under
`torch.cuda.set_sync_debug_mode("error")` (a synchronizing CUDA call raises there), then host
microseconds per call (median of 7 batches of 200); for rotary_embedding also its pieces. JSON to
benchmarks/results/<gpu-dir>/vendor-host.json.

    python benchmarks/probes/vendor_host.py [--gpu-dir h200]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import environment, write_json  # noqa: E402


def host_us(fn, calls: int = 200, batches: int = 7) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - t0) / calls * 1e6)
        torch.cuda.synchronize()
    return statistics.median(out)


def syncs(fn) -> str | None:
    """None, or the message of the first synchronizing call `fn` makes."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return None
    except RuntimeError as exc:
        return str(exc).splitlines()[0][:300]
    finally:
        torch.cuda.set_sync_debug_mode(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-dir", default="h200")
    args = parser.parse_args()
    import kforge

    rows = []
    for name, spec in sorted(kforge.ops.SPECS.items()):
        shape = spec.shape_sets["decode"][0]
        a = spec.make_inputs(shape, torch.bfloat16, "cuda", 0)
        entry = kforge.ops.ENTRIES[name]
        for _ in range(3):  # a Triton decision records (and verifies, synchronizing) on its 2nd call
            entry(*a)
        row = {"op": name, "shape": list(shape), "vendor_sync": syncs(lambda: spec.vendor(*a)),
               "kforge_sync": syncs(lambda: entry(*a)), "vendor_host_us": host_us(lambda: spec.vendor(*a)),
               "kforge_host_us": host_us(lambda: entry(*a))}
        if name == "rotary_embedding":
            q, k, pos, cache, neox = a
            row["pieces_host_us"] = {
                "cache[positions]": host_us(lambda: cache[pos]),
                "index_select": host_us(lambda: cache.index_select(0, pos)),
                "embedding": host_us(lambda: torch.nn.functional.embedding(pos, cache)),
                "q.float()": host_us(lambda: q.float()),
                "cat": host_us(lambda: torch.cat((q, q), -1)),
            }
            row["pieces_sync"] = {"cache[positions]": syncs(lambda: cache[pos])}
        rows.append(row)
        print(f"{name:19s} vendor {row['vendor_host_us']:7.1f} us  kforge {row['kforge_host_us']:7.1f} us  "
              f"syncs: vendor {row['vendor_sync'] or '-'} | kforge {row['kforge_sync'] or '-'}", flush=True)
    if any("pieces_host_us" in r for r in rows):
        print({k: round(v, 1) for r in rows for k, v in r.get("pieces_host_us", {}).items()})
    path = write_json("vendor-host.json", {"benchmark": "probes/vendor_host", "environment": environment(),
                                           "dtype": "bfloat16", "results": rows}, args.gpu_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
