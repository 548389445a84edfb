"""Task functions that `kforge.evaluate.sandbox` workers import by name in the sandbox and executor
tests ("sandbox_tasks:returns"): tests/ is on the coordinator's sys.path, which the worker appends
to its own. Each takes the payload dict and returns JSON data, or misbehaves as its name says."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time


def returns(payload):
    return {"echo": payload, "pid": os.getpid()}


def raises(payload):
    raise ValueError(payload.get("message", "bad candidate"))


def sleeps(payload):
    """Starts a grandchild that sleeps too (its pid written to payload["pid_file"]), then sleeps."""
    if payload.get("pid_file"):
        child = subprocess.Popen(["sleep", "600"])
        with open(payload["pid_file"], "w") as f:
            f.write(str(child.pid))
    time.sleep(payload.get("seconds", 600))
    return "woke up"


def exits(payload):
    os._exit(payload["code"])


def sys_exits(payload):
    sys.exit(payload["code"])


def kills_itself(payload):
    os.kill(os.getpid(), signal.SIGKILL)


def segfaults(payload):
    ctypes.string_at(0)


def environ(payload):
    return {"env": dict(os.environ), "cwd": os.getcwd()}


def allocates(payload):
    block = bytearray(payload["mb"] << 20)
    return len(block)


def unjsonable(payload):
    return object()


def chatty(payload):
    print("x" * 20000)
    print("the end", file=sys.stderr)
    return 1


def device_span(payload):
    """(CUDA_VISIBLE_DEVICES, start, end) of a task that holds its device for payload["seconds"]."""
    start = time.time()
    time.sleep(payload.get("seconds", 0.3))
    return {"device": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time(), "index": payload.get("index")}


def cuda_device_assert(payload):
    """An out-of-range index on the GPU: a device-side assert poisons this process's CUDA context."""
    import torch

    x = torch.zeros(4, device="cuda")
    x[torch.tensor([10], device="cuda")] = 1.0
    torch.cuda.synchronize()
    return "unreachable"


def cuda_name(payload):
    import torch

    return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "count": torch.cuda.device_count(),
            "name": torch.cuda.get_device_name(0)}


def debug_store(payload):
    from kforge.store import KernelStore
    from kforge import paths
    s = KernelStore()
    k = s.put(payload["source"], op="rms_norm", provider="x")
    import os
    return {"home": str(paths.home()), "root": str(s.root), "listing": [str(p) for p in s.root.rglob("*")], "exists": k.path.exists()}
