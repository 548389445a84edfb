"""Executors: run a batch of tasks (each a function named by import path, a JSON payload and a
timeout) and return one `WorkerOutcome` per task, in order, whatever the tasks do.

    with make_executor("local") as ex:            # "inprocess" | "local" | "ray"
        outcomes = ex.map([Task("kforge.evaluate.worker_tasks:verify_candidate", payload, 120.0), ...])

- `InProcessExecutor`: calls the functions in this process. NO ISOLATION: tests only.
- `LocalPoolExecutor`: one sandboxed worker process per task (`sandbox.run_isolated`), at most one
  at a time per GPU (CUDA_VISIBLE_DEVICES names it), tasks spread over the GPUs concurrently. On
  GPUs it keeps a spare worker per GPU started and imported ahead of the next task (`spares`), and
  the catalog's seeds share one Triton/Inductor cache (`paths.worker_cache_dir`).
- `RayExecutor`: a Ray task per kforge task (`num_gpus` on a cluster with GPUs, `num_cpus=1`
  otherwise); the Ray task itself runs `sandbox.run_isolated`, so a candidate's crash costs its
  sandbox process, never the Ray worker. A Ray worker lost mid-task (its process or node died) is
  retried by Ray elsewhere (`retries`); a candidate's own crash is an outcome, never retried. Ray is
  imported only here (the `kforge[ray]` extra).
Whatever the executor, the caller is the single coordinator: it alone gathers outcomes and writes
the score table; workers only return JSON data.
"""
from __future__ import annotations

import abc
import concurrent.futures
import dataclasses
import enum
import json
import os
import queue
import sys
import time
import traceback
from typing import Any, Mapping, Sequence

from kforge.evaluate.isolation import SandboxUnavailable
from kforge.evaluate.sandbox import DEFAULT_ALLOW, Status, WorkerOutcome, _redacted, launch_for, run_isolated
from kforge.evaluate.sandbox_worker import exception_types
from kforge.evaluate.spares import Spares

WARM_ENV = "KFORGE_WARM_WORKERS"  # "1": spare workers on CPU slots too; "0": none, even on GPUs


@dataclasses.dataclass(frozen=True)
class Task:
    """One unit of work: `fn(payload)` with fn named "package.module:function"."""

    fn: str
    payload: Mapping[str, Any]
    timeout_s: float
    memory_mb: int | None = None  # None: the sandbox's default (a limit always applies)
    device_memory_mb: int | None = None  # GPU tasks: the worker's device-memory cap (None: the default share)
    secrets: Mapping[str, str] | None = None  # label -> value, redacted from the outcome
    trusted: bool = False  # kforge's own code (a catalog seed): may run where bwrap cannot

    def __post_init__(self) -> None:
        module, _, attr = self.fn.partition(":")
        if not module or not attr:
            raise ValueError(f"Task.fn must be 'package.module:function', got {self.fn!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"Task.timeout_s must be positive, got {self.timeout_s}")
        try:
            json.dumps(self.payload)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Task.payload must be JSON data: {exc}") from None

    def to_json(self) -> dict:
        return {"fn": self.fn, "payload": self.payload, "timeout_s": self.timeout_s, "memory_mb": self.memory_mb,
                "device_memory_mb": self.device_memory_mb, "secrets": dict(self.secrets or {}),
                "trusted": self.trusted}


class ExecutorKind(str, enum.Enum):
    INPROCESS = "inprocess"
    LOCAL = "local"
    RAY = "ray"


class Executor(abc.ABC):
    """Runs tasks; `map` returns their outcomes in task order and raises for none of them."""

    @abc.abstractmethod
    def map(self, tasks: Sequence[Task]) -> list[WorkerOutcome]:
        ...

    def warm_up(self, trusted: bool = False) -> None:
        """Start, ahead of the first task, what lets it start sooner (LocalPoolExecutor: a spare
        worker per slot for tasks of this trust); by default nothing."""

    def timing_slots(self) -> int:
        """How many tasks that time themselves may run at once without sharing a device: one per
        GPU; 1 where tasks share the CPU (side by side on CPU slots, vendor was timed at 5-16 ms a
        call where it costs 4-12 us)."""
        return 1

    def close(self) -> None:
        """Release what the executor holds (threads, a Ray instance it started)."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InProcessExecutor(Executor):
    """Calls each task's function directly, in THIS process, one after another.

    FOR TESTS ONLY. There is NO ISOLATION: no timeout, no memory limit, no environment filter; a
    candidate that crashes, hangs, calls os._exit or corrupts the CUDA context takes the caller
    down with it, and it sees every secret in this process's environment. Never use it for
    untrusted code. Values are still passed through JSON, as the other executors pass them."""

    def map(self, tasks: Sequence[Task]) -> list[WorkerOutcome]:
        return [self._run(task) for task in tasks]

    @staticmethod
    def _run(task: Task) -> WorkerOutcome:
        import importlib

        start = time.monotonic()
        try:
            module, _, attr = task.fn.partition(":")
            fn: Any = importlib.import_module(module)
            for part in attr.split("."):
                fn = getattr(fn, part)
            value = json.loads(json.dumps(fn(json.loads(json.dumps(task.payload)))))
        except Exception as exc:
            outcome = WorkerOutcome(Status.ERROR, error=f"{type(exc).__name__}: {exc}", error_types=exception_types(exc),
                                    traceback=traceback.format_exc(),
                                    duration_s=time.monotonic() - start, pid=os.getpid())
        else:
            outcome = WorkerOutcome(Status.OK, value=value, duration_s=time.monotonic() - start, pid=os.getpid())
        return _redacted(outcome, task.secrets)


class LocalPoolExecutor(Executor):
    """Each task in its own sandboxed process; one worker at a time per GPU.

    devices: GPU indices (ints or "cuda:N"): one slot per GPU, its tasks run with
    CUDA_VISIBLE_DEVICES=N and `cuda=True`. None: every GPU torch sees, or, without CUDA, CPU
    slots. []: CPU slots. workers: the number of CPU slots (default min(4, cores)); tasks on CPU
    slots see no GPU and run under RLIMIT_AS when they have a memory limit. warm: keep a spare
    worker per slot (default: on GPU slots, where the device times itself; off on CPU slots, where a
    spare's imports would share the cores with the timed task; KFORGE_WARM_WORKERS sets the default).
    share_cache: trusted tasks (catalog seeds) keep their compiled kernels across workers."""

    def __init__(self, devices: Sequence[int | str] | None = None, *, workers: int | None = None,
                 env_allow=DEFAULT_ALLOW, warm: bool | None = None, share_cache: bool = True):
        if devices is None:
            devices = _visible_gpus()
        gpus = [_gpu_index(d) for d in devices]
        if len(set(gpus)) != len(gpus):
            raise ValueError(f"LocalPoolExecutor: a GPU is named twice in {list(devices)}")
        if gpus:
            self.slots: list[str | None] = [_physical_gpu(i) for i in gpus]
        else:
            n = workers if workers is not None else min(4, os.cpu_count() or 1)
            if n < 1:
                raise ValueError(f"LocalPoolExecutor needs at least one worker, got {n}")
            self.slots = [None] * n
        self.env_allow = tuple(env_allow)
        self.spares = Spares(limit=2 * len(self.slots)) if _warm(warm, bool(gpus)) else None
        self.share_cache = share_cache
        self._pool = concurrent.futures.ThreadPoolExecutor(len(self.slots), thread_name_prefix="kforge-pool")
        # The free slots, shared by every map() in flight: searches run from several threads (the
        # demo runs one per op at once) never put two tasks on one GPU.
        self._free: queue.Queue = queue.Queue()
        for slot in self.slots:
            self._free.put(slot)

    def map(self, tasks: Sequence[Task]) -> list[WorkerOutcome]:
        free = self._free
        sys_path = list(sys.path)

        def run(task: Task) -> WorkerOutcome:
            slot = free.get()  # one task per slot at a time: threads never outnumber slots
            try:
                return run_isolated(task.fn, task.payload, timeout_s=task.timeout_s, memory_mb=task.memory_mb,
                                    env_allow=self.env_allow, cuda=slot is not None, sys_path=sys_path,
                                    env=None if slot is None else {"CUDA_VISIBLE_DEVICES": slot},
                                    device_memory_mb=task.device_memory_mb, secrets=task.secrets,
                                    trusted=task.trusted, spares=self.spares,
                                    shared_cache=self._cache_for(task.trusted))
            except SandboxUnavailable:
                raise  # the machine's set-up, not the task: the caller says what to install
            except Exception as exc:  # the coordinator's side failed (no process could start, ...)
                return WorkerOutcome(Status.ERROR, error=f"executor: {type(exc).__name__}: {exc}",
                                     traceback=traceback.format_exc())
            finally:
                free.put(slot)

        return list(self._pool.map(run, tasks))

    def timing_slots(self) -> int:
        return len(self.slots) if self.slots[0] is not None else 1

    def warm_up(self, trusted: bool = False) -> None:
        if self.spares is None:
            return
        for slot in self.slots:
            try:
                self.spares.refill(launch_for("a warm-up worker", cuda=slot is not None, env_allow=self.env_allow,
                                              env=None if slot is None else {"CUDA_VISIBLE_DEVICES": slot},
                                              sys_path=list(sys.path), trusted=trusted,
                                              shared_cache=self._cache_for(trusted)))
            except SandboxUnavailable:
                return  # the first task says why, as without a spare

    def _cache_for(self, trusted: bool) -> str | None:
        """The compile cache a task's worker shares with others: trusted code only."""
        return _shared_cache() if trusted and self.share_cache else None

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self.spares is not None:
            self.spares.close()


def _warm(warm: bool | None, gpus: bool) -> bool:
    """`warm` when given; else KFORGE_WARM_WORKERS when set; else on for GPU slots only."""
    if warm is not None:
        return warm
    env = os.environ.get(WARM_ENV, "").strip().lower()
    if env in ("0", "false", "no", "1", "true", "yes"):
        return env in ("1", "true", "yes")
    return gpus


def _shared_cache() -> str:
    from kforge import paths

    return str(paths.worker_cache_dir())


class RayExecutor(Executor):
    """Tasks as Ray tasks, each running `sandbox.run_isolated` inside the Ray worker.

    address: a running cluster ("auto", "ray://host:10001"); None starts (or joins the already
    initialised) local Ray. num_gpus_per_task: GPUs each task claims when the cluster has GPUs
    (Ray sets CUDA_VISIBLE_DEVICES for it); on a cluster without GPUs each task claims one CPU.
    init_kwargs: passed to `ray.init` (e.g. num_cpus=2). retries: how often Ray runs a task again
    when the Ray worker running it is lost (not when the candidate fails: that is its outcome);
    a lost attempt returns nothing, so nothing of it is recorded. kforge must be importable on every
    node (same install, or a runtime_env). A Ray instance this executor started is shut down by close()."""

    def __init__(self, address: str | None = None, num_gpus_per_task: float = 1, *, env_allow=DEFAULT_ALLOW,
                 retries: int = 2, **init_kwargs):
        try:
            import ray
        except ImportError as exc:
            raise ImportError("RayExecutor needs Ray: pip install 'kforge[ray]'") from exc
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            init_kwargs.setdefault("include_dashboard", False)
            init_kwargs.setdefault("log_to_driver", False)
            ray.init(address=address, **init_kwargs)
            self._started = True
        gpus = ray.cluster_resources().get("GPU", 0)
        self.num_gpus = num_gpus_per_task if gpus > 0 else 0
        resources = {"num_gpus": self.num_gpus} if self.num_gpus else {"num_cpus": 1}
        self.retries = retries
        self._remote = ray.remote(max_retries=retries, **resources)(_ray_task)
        self.env_allow = tuple(env_allow)

    def timing_slots(self) -> int:
        gpus = self._ray.cluster_resources().get("GPU", 0) if self.num_gpus else 0
        return max(1, int(gpus // self.num_gpus)) if gpus else 1

    def map(self, tasks: Sequence[Task]) -> list[WorkerOutcome]:
        sys_path = list(sys.path)
        refs = [self._remote.remote(task.to_json(), self.num_gpus > 0, list(self.env_allow), sys_path)
                for task in tasks]
        outcomes = []
        for ref in refs:
            try:
                outcomes.append(WorkerOutcome.from_json(self._ray.get(ref)))
            except Exception as exc:  # the Ray worker itself failed (node lost, worker killed)
                outcomes.append(WorkerOutcome(Status.CRASHED, error=f"ray: {type(exc).__name__}: {exc}"))
        return outcomes

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False


def _ray_task(task: dict, cuda: bool, env_allow: list, sys_path: list) -> dict:
    """Body of one Ray task, run in a Ray worker: the sandbox does the work."""
    outcome = run_isolated(task["fn"], task["payload"], timeout_s=task["timeout_s"], memory_mb=task["memory_mb"],
                           env_allow=env_allow, cuda=cuda, sys_path=sys_path,
                           device_memory_mb=task.get("device_memory_mb"), secrets=task.get("secrets"),
                           trusted=task.get("trusted", False))
    return outcome.to_json()


def make_executor(kind: str | ExecutorKind, **kwargs) -> Executor:
    """The executor named `kind` ("inprocess", "local", "ray"), built with `kwargs`."""
    try:
        kind = ExecutorKind(kind)
    except ValueError:
        valid = ", ".join(k.value for k in ExecutorKind)
        raise ValueError(f"unknown executor kind {kind!r}; valid kinds: {valid}") from None
    cls = {ExecutorKind.INPROCESS: InProcessExecutor, ExecutorKind.LOCAL: LocalPoolExecutor,
           ExecutorKind.RAY: RayExecutor}[kind]
    return cls(**kwargs)


def _gpu_index(device: int | str) -> int:
    if isinstance(device, int):
        return device
    text = str(device)
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    if text.isdigit():
        return int(text)
    raise ValueError(f"LocalPoolExecutor devices are GPU indices or 'cuda:N', got {device!r}")


def _physical_gpu(index: int) -> str:
    """What CUDA_VISIBLE_DEVICES must say for a worker to see GPU `index` of this process: the
    index itself, or the entry it maps to when this process's CUDA_VISIBLE_DEVICES remaps GPUs."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return str(index)
    entries = [e.strip() for e in visible.split(",")]
    if index >= len(entries):
        raise ValueError(f"GPU {index} is not among CUDA_VISIBLE_DEVICES={visible!r}")
    return entries[index]


def _visible_gpus() -> list[int]:
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
