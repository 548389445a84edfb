"""Background tuning (opt-in, `KFORGE_TUNE=background`): a key that keeps missing in this process is
handed to `kforge tune` in a child process, one at a time per device; no call ever waits for it.

Every `CHECK_S` the router's periodic check hands the tuner its decisions; keys served by vendor
(miss or fallback) at least `KFORGE_TUNE_AFTER` times (default `AFTER_CALLS`) are queued, and when
no tuning child runs for their device one is started for up to `BATCH` of them with a time budget
(`KFORGE_TUNE_SECONDS`, default `BUDGET_S`). The child is `python -m kforge tune --key ...`: vendor
and Inductor are calibrated there, Triton candidates verified in its sandboxed workers (bubblewrap),
and the records it writes land in the user table, which the router re-reads at its next table
check. A child that fails or crashes costs one log line; its keys are not offered again in this
process. Nothing here runs on a call's thread but the check of one float.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from typing import Iterable, Sequence

log = logging.getLogger("kforge")

ENV_VAR = "KFORGE_TUNE"
AFTER_CALLS = 64
BUDGET_S = 300.0
BATCH = 16
CHECK_S = 5.0


def enabled() -> bool:
    """KFORGE_TUNE=background turns background tuning on; any other value but unset or "off" is refused."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in ("", "off", "0", "none"):
        return False
    if value != "background":
        log.warning("kforge: %s=%r is not a mode (use background or off): background tuning stays off",
                    ENV_VAR, os.environ.get(ENV_VAR))
        return False
    return True


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        log.warning("kforge: %s=%r is not a positive number: using %g", name, text, default)
        return default
    return value


def key_text(op: str, dtype: str, shape: Sequence[int]) -> str:
    """The `kforge tune --key` form of a key: OP:DTYPE:SHAPE (the primary input's shape)."""
    return f"{op}:{dtype}:{'x'.join(map(str, shape))}"


def command(keys: Iterable[str], device: str, *, max_seconds: float | None = None, json_out: bool = True) -> list[str]:
    """The `kforge tune` command line for `keys` (key_text strings) on `device`."""
    out = [sys.executable, "-m", "kforge", "tune", "--device", device]
    for k in keys:
        out += ["--key", k]
    if max_seconds is not None:
        out += ["--max-seconds", f"{max_seconds:g}"]
    return out + (["--json"] if json_out else [])


def device_for(fingerprint: str) -> str | None:
    """A torch device string of this machine whose fingerprint is `fingerprint`, or None."""
    if fingerprint.startswith("cpu|"):
        return "cpu"
    import torch

    from kforge.device import fingerprint as fingerprint_of

    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        if str(fingerprint_of(f"cuda:{i}")) == fingerprint:
            return f"cuda:{i}"
    return None


class Tuner:
    """The background tuning of one process: queued keys per device, the running child per device."""

    def __init__(self, after_calls: float | None = None, budget_s: float | None = None):
        self.after_calls = after_calls or _env_number("KFORGE_TUNE_AFTER", AFTER_CALLS)
        self.budget_s = budget_s or _env_number("KFORGE_TUNE_SECONDS", BUDGET_S)
        self.next_check = 0.0
        self.offered: set[tuple[str, str]] = set()  # (device, key_text) of keys queued or handed to a child
        self.queued: dict[str, list[str]] = {}  # device -> key_texts waiting for that device's child
        self.children: dict[str, subprocess.Popen] = {}
        self.finished: list[dict] = []  # device, keys, exit code of every child that ended
        self.lock = threading.Lock()
        self.running: dict[str, list[str]] = {}

    def due(self, now: float) -> bool:
        if now < self.next_check:
            return False
        self.next_check = now + CHECK_S
        return True

    def offer_from(self, router) -> None:
        """Offer the keys `router` (the process's `Router`) served by vendor, with their calls."""
        try:
            with router.lock:
                rows = [(d.key.device, name, d.key.dtypes.split(",")[0], op.spec.shape_for(d.key.shape), d.counted)
                        for name, op in router.ops.items() for d in op.all_decisions()
                        if d.kind.value in ("miss", "fallback") and d.key is not None]
            self.offer(rows)
        except Exception as exc:  # background tuning never breaks the user's program
            log.warning("kforge: background tuning failed to start: %s", exc)

    def offer(self, served_by_vendor: Iterable[tuple[str, str, str, Sequence[int], int]]) -> None:
        """(device fingerprint, op, dtype, input shape, calls this process) of keys vendor served;
        queues the ones past the threshold, reaps ended children and starts new ones."""
        with self.lock:
            for fp, op, dtype, shape, calls in served_by_vendor:
                text = key_text(op, dtype, shape)
                if calls < self.after_calls or (fp, text) in self.offered:
                    continue
                self.offered.add((fp, text))
                self.queued.setdefault(fp, []).append(text)
            self._reap()
            for fp in [fp for fp, keys in self.queued.items() if keys and fp not in self.children]:
                self._start(fp)

    def _reap(self) -> None:
        for fp, child in list(self.children.items()):
            code = child.poll()
            if code is None:
                continue
            del self.children[fp]
            keys = self.running.pop(fp, [])
            self.finished.append({"device": fp, "keys": keys, "exit_code": code})
            if code != 0:
                log.warning("kforge: background tuning of %d key(s) on %s ended with exit code %s (the table is "
                            "unchanged for what it did not finish)", len(keys), fp, code)

    def _start(self, fp: str) -> None:
        device = device_for(fp)
        keys, self.queued[fp] = self.queued[fp][:BATCH], self.queued[fp][BATCH:]
        if device is None:
            log.warning("kforge: background tuning: no device of this machine is %s; %d key(s) left", fp, len(keys))
            return
        try:
            child = subprocess.Popen(command(keys, device, max_seconds=self.budget_s, json_out=False),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, env={**os.environ, ENV_VAR: "off"})
        except OSError as exc:
            log.warning("kforge: background tuning could not start (%s); %d key(s) left untuned", exc, len(keys))
            return
        self.children[fp] = child
        self.running[fp] = keys

    def wait(self, timeout: float | None = None) -> list[dict]:
        """Wait for the running children (tests, `kforge.tune(..., wait=True)`); what ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for child in list(self.children.values()):
            try:
                child.wait(None if deadline is None else max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                break
        with self.lock:
            self._reap()
            return list(self.finished)
