"""Probe: does rotary_embedding's vendor synchronize the host on CUDA, and where (issue 16's tune
measured its host cost at 23 ms a call against 57 us for Inductor)."""
import time
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

from kforge.ops import get_spec

spec = get_spec("rotary_embedding")
args = spec.make_inputs((16, 32, 8, 128), torch.bfloat16, "cuda", 0)
print([(a.shape, a.dtype, a.device) if isinstance(a, torch.Tensor) else a for a in args])
spec.vendor(*args)
torch.cuda.synchronize()
torch.cuda.set_sync_debug_mode("warn")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    spec.vendor(*args)
torch.cuda.set_sync_debug_mode(0)
for w in caught:
    print("SYNC:", str(w.message)[:200], w.filename, w.lineno)
for name, fn in (("vendor", spec.vendor), ("reference", spec.reference)):
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(50):
        fn(*args)
    host = (time.perf_counter() - t) / 50 * 1e6
    torch.cuda.synchronize()
    print(f"{name}: host {host:.1f} us/call, with sync {(time.perf_counter() - t) / 50 * 1e6:.1f}")
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
    spec.vendor(*args)
    torch.cuda.synchronize()
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
