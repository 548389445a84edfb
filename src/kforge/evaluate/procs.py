"""Process plumbing of the sandbox's coordinator side (`kforge.evaluate.sandbox`): pipes, stopping a
worker and everything it started, its exit status, resident memory, output tails. No policy here:
what a worker may do is decided in `sandbox` and `isolation`.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time

POLL_S = 0.01
STOP_WAIT_S = 5.0  # for the sandbox's PID namespace to be torn down after its init is killed
OUTPUT_TAIL = 8000  # characters of the worker's stdout and stderr kept in an outcome


def _send(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        pass  # the worker died before reading its task: its outcome says so
    finally:
        os.close(fd)


def _drain(fd: int, limit: int) -> bytes:
    """What is already in the pipe (non-blocking: a process the worker forked may hold it open)."""
    out = bytearray()
    while len(out) < limit and select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _child_pid(info: bytes) -> int | None:
    try:
        return int(json.loads(info.decode())["child-pid"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def _stop(proc: subprocess.Popen, ns_init: int | None) -> None:
    """Kill everything the worker started. Under bwrap, killing the PID namespace's init kills the
    whole namespace (setsid daemons included); bwrap reaps it only once the namespace is empty, so
    its exit means nothing of the worker is left. Then the process group, for the plain case."""
    if ns_init is not None and not _exited(proc):
        try:
            os.kill(ns_init, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + STOP_WAIT_S
        while not _exited(proc) and time.monotonic() < deadline:
            time.sleep(POLL_S)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _exited(proc: subprocess.Popen) -> bool:
    if hasattr(os, "waitid"):
        # WNOWAIT leaves the worker a zombie until the group is killed, so its pid (the group id)
        # cannot pass to another process meanwhile.
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    return proc.poll() is not None  # pragma: no cover - platforms without waitid


def _exit_code(code: int, via_bwrap: bool) -> int:
    # bwrap exits 128 + N when its command died of signal N.
    if via_bwrap and 128 < code < 128 + 65:
        return -(code - 128)
    return code


def _tree_rss_mb(root: int) -> float:
    """Resident memory of `root` and all its descendants (a worker that forks is counted whole)."""
    parents, rss = {}, {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * page
        except (OSError, ValueError, IndexError):
            continue
    total, frontier = rss.get(root, 0), [root]
    while frontier:
        current = frontier.pop()
        for pid, parent in parents.items():
            if parent == current:
                total += rss.get(pid, 0)
                frontier.append(pid)
    return total / 2**20


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - OUTPUT_TAIL))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _signal_name(number: int) -> str:
    try:
        return f"{signal.Signals(number).name} ({number})"
    except ValueError:
        return str(number)

