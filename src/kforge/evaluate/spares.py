"""Spare workers: a sandboxed worker started, and its imports done, before its task exists.

    spares = Spares(preload=WORKER_PRELOAD)
    outcome = run_isolated(fn, payload, timeout_s=120, spares=spares)   # takes a spare, starts the next
    spares.close()                                                       # kills the idle ones

A cold worker spends its first seconds starting Python and importing torch, Triton and kforge
(2.1 s on this project's CPU machines, ~5 s on the H200 host, measured: `kforge tune --json`
phases against the worker's wall time). A spare does that while the previous task runs, so a
run of tasks pays it once. Isolation is unchanged: a spare is an ordinary worker (its own bwrap
sandbox, scratch dir and PID namespace) that takes exactly one task and exits; it runs no code of
the task's before the task is sent, it is never reused, and CUDA is not initialised by the imports
(the task's own first CUDA call does it). The wall-clock limit counts from the moment the task is
sent. A spare matches a task only when everything about its start is equal (`sandbox.Launch`:
isolation level, GPU, environment, sys.path, user ops, cache); otherwise the task starts its own.
"""
from __future__ import annotations

import dataclasses
import threading

from kforge.evaluate.sandbox import Launch, Worker, start_worker

# What an evaluation worker imports first (kforge.evaluate.worker_tasks:evaluate_stored's imports).
WORKER_PRELOAD = ("torch", "triton", "kforge.ops", "kforge.evaluate.correctness", "kforge.evaluate.timing",
                  "kforge.backends.launcher", "kforge.evaluate.worker_tasks", "kforge.testing")


class Spares:
    """At most `per_launch` idle workers per kind of start, `limit` in all (the oldest kind's are
    dropped first). Thread-safe: the executors' slot threads share one."""

    def __init__(self, preload: tuple[str, ...] = WORKER_PRELOAD, *, per_launch: int = 1, limit: int = 8):
        if per_launch < 1 or limit < 1:
            raise ValueError(f"Spares needs per_launch and limit >= 1, got {per_launch} and {limit}")
        self.preload = tuple(preload)
        self.per_launch = per_launch
        self.limit = limit
        self._idle: dict[Launch, list[Worker]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.started = 0  # spares started, and of them
        self.taken = 0  # given a task

    def _kind(self, launch: Launch) -> Launch:
        return dataclasses.replace(launch, preload=self.preload)

    def take(self, launch: Launch) -> Worker | None:
        """An idle spare for `launch` that is still alive, or None."""
        kind = self._kind(launch)
        while True:
            with self._lock:
                idle = self._idle.get(kind)
                worker = idle.pop(0) if idle else None
            if worker is None:
                return None
            if worker.proc.poll() is None:
                with self._lock:
                    self.taken += 1
                return worker
            worker.discard()  # it died waiting (killed from outside): never given a task

    def refill(self, launch: Launch) -> None:
        """Start a spare for `launch` unless one is idle already."""
        kind = self._kind(launch)
        with self._lock:
            if self._closed or len(self._idle.get(kind, ())) >= self.per_launch:
                return
        worker = start_worker(kind)
        dropped: list[Worker] = []
        with self._lock:
            if self._closed:
                dropped.append(worker)
            else:
                self._idle.setdefault(kind, []).append(worker)
                self.started += 1
                while sum(len(v) for v in self._idle.values()) > self.limit:
                    oldest = next(k for k, v in self._idle.items() if v)
                    dropped.append(self._idle[oldest].pop(0))
        for w in dropped:
            w.discard()

    def idle(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._idle.values())

    def close(self) -> None:
        """Kill every idle spare and remove its scratch dir; later refills start nothing."""
        with self._lock:
            self._closed = True
            workers = [w for v in self._idle.values() for w in v]
            self._idle.clear()
        for w in workers:
            w.discard()
