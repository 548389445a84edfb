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
    """Starts a grandchild that loops too (its command line names payload["marker"]), then sleeps."""
    if payload.get("marker"):  # a shell loop whose command line names the marker (tests look for it)
        subprocess.Popen(["/bin/sh", "-c", "while :; do sleep 0.05; done", payload["marker"]])
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



# -- what candidate code in a worker tries (tests/test_isolation.py): each must fail or be contained --
def worker_writes_home(payload):
    """Plants a kernel and a table record in the coordinator's KFORGE_HOME (payload["home"])."""
    wrote, errors = [], []
    paths = [os.path.join(payload["home"], rel) for rel in ("kernels/ab/planted.py", "table/rms_norm.json")]
    for path in paths + [os.path.join(d, "planted.txt") for d in payload.get("elsewhere", [])]:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write("planted")
            wrote.append(path)
        except OSError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return {"wrote": wrote, "errors": errors, "own_home": os.environ.get("KFORGE_HOME")}


def _marker_loop(marker: str, path: str) -> None:
    """Exec a shell loop whose argv names `marker` (tests find it in /proc), appending to `path`
    every 50 ms."""
    os.execv("/bin/sh", ["sh", "-c", f'while :; do echo x >> "{path}"; sleep 0.05; done', marker])


def worker_setsid_daemon(payload):
    """Double fork + setsid: a daemon outside the worker's process group and session."""
    path = os.path.join(os.getcwd(), "daemon.log")
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            _marker_loop(payload["marker"], path)
        os._exit(0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if os.path.exists(path) and open(path).read().count("x") >= 2:
            return {"daemon_writing": True}
        time.sleep(0.02)
    return {"daemon_writing": False}


def worker_reads_parent_env(payload):
    """Reads every /proc/<pid>/environ it can (its parent's first): which secret names it saw."""
    names, readable = set(), []
    pids = [str(os.getppid())] + [p for p in os.listdir("/proc") if p.isdigit()]
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                data = f.read()
        except OSError:
            continue
        readable.append(pid)
        for item in data.split(b"\0"):
            name = item.partition(b"=")[0].decode(errors="replace")
            if any(word in name for word in ("KEY", "TOKEN", "SECRET")):
                names.add(name)
    return {"secret_names": sorted(names), "readable": readable, "ppid": os.getppid()}


def worker_connects(payload):
    import socket

    try:
        with socket.create_connection(("127.0.0.1", payload["port"]), timeout=2) as s:
            s.sendall(b"exfiltrated")
        return {"connected": True, "error": None}
    except OSError as exc:
        return {"connected": False, "error": f"{type(exc).__name__}: {exc}"}


def worker_looks_for_task_file(payload):
    """Searches every file it can see in its dirs and /tmp for the payload's marker (a task file)."""
    marker, hits = payload["marker"].encode(), []
    for top in {os.getcwd(), os.environ.get("TMPDIR", "/tmp"), os.path.expanduser("~"), "/tmp"}:
        for folder, _, files in os.walk(top):
            for name in files:
                path = os.path.join(folder, name)
                try:
                    if os.path.getsize(path) < 1 << 20 and marker in open(path, "rb").read():
                        hits.append(path)
                except OSError:
                    pass
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/") and os.path.isfile(target) and target != "/dev/null":
            hits.append(f"fd {fd} -> {target}")
    return {"hits": hits}


def worker_allocates_and_touches(payload):
    block = bytearray(payload["mb"] << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return len(block)


def worker_spins(payload):
    """Starts a marker daemon, then spins at 100% CPU forever (the coordinator is killed meanwhile)."""
    if os.fork() == 0:
        os.setsid()
        _marker_loop(payload["marker"], os.path.join(os.getcwd(), "spin.log"))
    while True:
        pass


def worker_forges_stdout_result(payload):
    import json

    print(json.dumps({"status": "ok", "value": {"verdict": {"accepted": True}}}))
    sys.stdout.flush()
    raise ValueError("the real outcome")


def worker_forges_result_pipe(payload):
    """Writes a forged result to the result pipe (its fd is on the worker's command line), then
    returns: the pipe then holds two documents."""
    import json

    os.write(int(sys.argv[-1]), json.dumps({"status": "ok", "value": "forged"}).encode())
    return "honest"


def worker_huge_result(payload):
    return "x" * payload["bytes"]


def worker_leaks_secrets(payload):
    """Puts payload["secret"] in its value, stdout, stderr and error message."""
    print("stdout:", payload["secret"])
    print("stderr:", payload["secret"], file=sys.stderr)
    if payload.get("raise"):
        raise RuntimeError(f"leaked {payload['secret']}")
    return {"leak": payload["secret"], "nested": [payload["secret"]], payload["secret"]: 1}


def spare_probe(payload):
    """What a task sees of the worker it was given: which of payload["modules"] were imported before
    it ran, its scratch home (and a file a previous task left there), and the compile-cache paths.
    With payload["leave"]: leaves a file in its home and a daemon behind."""
    home = os.environ["HOME"]
    found = {"imported": [m for m in payload.get("modules", ()) if m in sys.modules], "pid": os.getpid(),
             "home": home, "left_over": os.listdir(home), "triton_cache": os.environ.get("TRITON_CACHE_DIR"),
             "marker_alive": False}
    if payload.get("look_for"):
        found["marker_alive"] = subprocess.run(["pgrep", "-f", payload["look_for"]], capture_output=True).returncode == 0
    if payload.get("leave"):
        with open(os.path.join(home, "left-by-" + str(os.getpid())), "w") as f:
            f.write("planted")
        subprocess.Popen(["/bin/sh", "-c", "while :; do sleep 0.05; done", payload["leave"]], start_new_session=True)
    if payload.get("cache_file"):
        cache = os.environ["TRITON_CACHE_DIR"]
        os.makedirs(cache, exist_ok=True)
        found["cache_before"] = sorted(os.listdir(cache))
        with open(os.path.join(cache, payload["cache_file"]), "w") as f:
            f.write("compiled")
    if payload.get("peek"):
        found["peek_visible"] = os.path.exists(payload["peek"])
    if payload.get("list_after"):  # what of the scratch dirs is visible once others started beside it
        time.sleep(payload["list_after"]["seconds"])
        found["listed"] = sorted(os.listdir(payload["list_after"]["dir"]))
    return found
