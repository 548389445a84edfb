"""Run untrusted work (a candidate's compile, correctness and timing) in a fresh, isolated worker.

    outcome = run_isolated("kforge.evaluate.worker_tasks:verify_candidate", {"source": ...}, timeout_s=120)
    outcome.status   # "ok" | "error" | "timeout" | "crashed" | "killed"; outcome.value is JSON data

Why a process: an out-of-bounds store poisons the whole CUDA context of its process, a hang never
returns, `os._exit` ends everything. Nothing untrusted runs in the process that serves or
records results; whatever a task does, `run_isolated` returns an outcome and never raises for it.

The worker is a new Python interpreter (`sys.executable`) inside bubblewrap (`isolation`: read-only
root, no HOME / KFORGE_HOME / network, own PID namespace, cleared environment, no capabilities)
that loads `sandbox_worker.py` by path (stdlib only: no torch import unless the task needs one), reads the
task as JSON from its stdin (a pipe: there is no task file), imports the function by name
("package.module:function", never a pickled closure), calls it with the payload and writes its
JSON-able return value to a dedicated pipe (fd passed on its command line; stdout is only logged).
The coordinator reads at most RESULT_CAP bytes of it and checks its schema: anything else is a
crash. Without bwrap (`isolation.Level.PROCESS`) the same worker runs as a plain process, for
trusted code or when the user opted out (`--unsafe-no-sandbox`); untrusted code is refused.

Every worker gets:
- a private scratch dir (`isolation.Scratch`: its cwd, TMPDIR, HOME, /tmp, a fresh KFORGE_HOME with
  the user ops bound read-only, Triton/Inductor caches), removed afterwards; one left by a killed
  coordinator is removed at the next start;
- an environment built from an ALLOW-list (`DEFAULT_ALLOW`) minus any name matching
  `kforge.redact.DENY` (`*KEY*`, `*TOKEN*`, ...), which wins even over the allow-list;
- the coordinator's `sys.path` entries appended to its own (bound read-only), so test modules import;
- a memory limit, always: `memory_mb` (default DEFAULT_CPU_MEMORY_MB) as RLIMIT_AS when the task
  does not use CUDA (`cuda=False`, which also hides GPUs); with `cuda=True` (CUDA maps tens of GB of
  address space at init) the coordinator polls the resident memory of all the worker's processes
  (default DEFAULT_GPU_RSS_MB) and the worker caps its device memory before the task runs
  (`device_memory_mb`, default DEFAULT_DEVICE_MEMORY_FRACTION of the device); and the wall clock;
- every string of its outcome passed through `kforge.redact.redact_data` (plus `secrets`).

Statuses: ok (returned a value); error (raised: `error` holds "Type: message", `traceback` the
trace); timeout (past `timeout_s`, killed); crashed (died without a valid result: a signal such as
SIGSEGV or SIGKILL, `os._exit`, `sys.exit`, a malformed or oversized result; `exit_code` is the exit
status, or minus the signal number); killed (stopped for exceeding its memory limit).
"""
from __future__ import annotations

import dataclasses
import enum
import fnmatch
import json
import os
import select
import subprocess
import sys
import threading
import time
from typing import Any, Iterable, Mapping

from kforge.evaluate.procs import (OUTPUT_TAIL, POLL_S, STOP_WAIT_S, _child_pid, _drain, _exit_code,  # noqa: F401
                                   _exited, _send, _signal_name, _stop, _tail, _tree_rss_mb)

DEFAULT_ALLOW: tuple[str, ...] = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_*", "TZ", "TERM",
    "TMPDIR", "PYTHONPATH", "PYTHONHASHSEED", "VIRTUAL_ENV", "LD_LIBRARY_PATH",
    "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "CUDA_HOME", "CUDA_PATH", "CUDA_LAUNCH_BLOCKING",
    "NVIDIA_VISIBLE_DEVICES", "TRITON_*", "TORCHINDUCTOR_*", "PYTORCH_*", "TORCH_HOME", "KFORGE_*",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XDG_CACHE_HOME",
    "NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS",
)
# An rms_norm seed's whole CPU evaluation under the Triton interpreter peaks at 1.15 GB of address
# space (VmPeak, measured); 4 GB leaves room for more threads and bigger shapes, and refuses 6 GB.
DEFAULT_CPU_MEMORY_MB = 4096
DEFAULT_GPU_RSS_MB = 16384
DEFAULT_DEVICE_MEMORY_FRACTION = 0.5
DEVICE_MEMORY_CAP = "its device-memory cap"  # in a killed CUDA worker's error: "over its device-memory cap: ..."
RESULT_CAP = 16 << 20  # bytes of result JSON the coordinator reads from a worker
RSS_EVERY_S = 0.1
IN_SANDBOX = "KFORGE_IN_SANDBOX"
WORKER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_worker.py")
_BOOTSTRAP = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("_kforge_sandbox_worker", sys.argv[1])
worker = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(worker)
worker.worker_main(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "")
"""


def denied(name: str) -> bool:
    from kforge.redact import denied as is_denied  # lazily: the worker loads this file stdlib only

    return is_denied(name)


class Status(str, enum.Enum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    CRASHED = "crashed"
    KILLED = "killed"


@dataclasses.dataclass(frozen=True)
class WorkerOutcome:
    """What happened to one task. value: the function's return value (JSON data) when ok."""

    status: Status
    value: Any = None
    error: str | None = None
    error_types: tuple[str, ...] = ()  # of the exception raised and its causes (sandbox_worker.exception_types)
    exit_code: int | None = None  # the worker's exit status; minus the signal number if signalled
    duration_s: float = 0.0
    traceback: str | None = None
    stdout: str = ""  # tails, OUTPUT_TAIL characters at most
    stderr: str = ""
    pid: int | None = None
    isolation: str | None = None  # isolation.Level value the worker ran under

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))
        object.__setattr__(self, "error_types", tuple(self.error_types))

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "WorkerOutcome":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def worker_env(env_allow: Iterable[str] = DEFAULT_ALLOW, source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of `source` (default os.environ) named by an allow pattern and by no DENY one."""
    source = os.environ if source is None else source
    allow = tuple(env_allow)
    return {name: value for name, value in source.items()
            if any(fnmatch.fnmatchcase(name, p) for p in allow) and not denied(name)}


def run_isolated(fn_qualname: str, payload: Mapping[str, Any], *, timeout_s: float, memory_mb: int | None = None,
                 env_allow: Iterable[str] = DEFAULT_ALLOW, env: Mapping[str, str] | None = None, cuda: bool = False,
                 sys_path: Iterable[str] | None = None, device_memory_mb: int | None = None,
                 secrets: Mapping[str, str] | None = None, trusted: bool = False, isolation=None,
                 spares=None, shared_cache: str | None = None) -> WorkerOutcome:
    """Run `fn_qualname(payload)` ("package.module:function") in a fresh isolated worker.

    timeout_s: wall-clock limit. memory_mb, device_memory_mb: see the module docstring. env:
    variables set in the worker on top of the allowed ones (the executors set
    CUDA_VISIBLE_DEVICES); a denied name here is a ValueError. cuda: the task uses the GPU.
    sys_path: appended to the worker's sys.path (default: this process's). secrets: label ->
    value, redacted from the outcome with the environment's secrets. trusted: the code is kforge's
    own (may run without bwrap). isolation: an `isolation.Level` to force (Level.PROCESS: the
    caller takes the risk); default bwrap, or refusal (`SandboxUnavailable`) for untrusted code
    where bwrap cannot run. spares: a `spares.Spares` pool to take an already started worker from
    (and to start the next one in); None: a worker started for this task alone. shared_cache: a
    directory holding Triton and Inductor caches that outlive the worker, bound writable (trusted
    code only: what one worker writes there, the next one loads). Raises only for the caller's
    mistakes and for that refusal."""
    module, _, attr = fn_qualname.partition(":")
    if not module or not attr:
        raise ValueError(f"fn_qualname must be 'package.module:function', got {fn_qualname!r}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    launch = launch_for(f"task {fn_qualname}", cuda=cuda, env_allow=env_allow, env=env, sys_path=sys_path,
                        trusted=trusted, isolation=isolation, shared_cache=shared_cache)
    limit_mb = memory_mb or (DEFAULT_GPU_RSS_MB if cuda else DEFAULT_CPU_MEMORY_MB)
    task = {"fn": fn_qualname, "payload": payload, "memory_mb": None if cuda else limit_mb,
            "sys_path": list(launch.sys_path), "device_memory_mb": device_memory_mb if cuda else None}
    try:
        text = json.dumps(task).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run_isolated: payload must be JSON data ({exc})") from None
    worker = spares.take(launch) if spares is not None else None
    if worker is None:
        worker = start_worker(launch)
    if spares is not None:
        spares.refill(launch)  # the next task's worker imports while this one runs
    try:
        outcome = _supervise(worker, text, timeout_s, limit_mb)
    finally:
        worker.discard()
    return _redacted(outcome, secrets)


def sandbox_env(scratch, env_allow, env, cuda: bool, shared_cache: str | None = None) -> dict[str, str]:
    """The environment of a worker in `scratch`: the allow-listed variables, `env` on top, and the
    scratch dir as its home, temp dir and caches (benchmarks/isolation_breakdown.py measures it)."""
    child = worker_env(env_allow)
    child.update(env or {})
    child.pop("KFORGE_TABLE", None)
    if child.get("PYTHONPATH"):  # relative entries would resolve in the scratch dir: another kforge, or none
        child["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in child["PYTHONPATH"].split(os.pathsep) if p)
    cache = scratch.path("cache")
    # The scratch dir is also the worker's home: a planted compile-cache entry or kernel dies with it.
    child.update({"TMPDIR": scratch.work, "HOME": scratch.path("home"), "KFORGE_HOME": scratch.path("kforge-home"),
                  "XDG_CACHE_HOME": cache, "TRITON_CACHE_DIR": os.path.join(cache, "triton"),
                  "TORCHINDUCTOR_CACHE_DIR": os.path.join(cache, "inductor"), "PYTHONDONTWRITEBYTECODE": "1",
                  IN_SANDBOX: "1"})  # user ops from untrusted sources load their code only here
    if shared_cache is not None:  # trusted code only (run_isolated checks): compiles kept across workers
        child.update({"TRITON_CACHE_DIR": os.path.join(shared_cache, "triton"),
                      "TORCHINDUCTOR_CACHE_DIR": os.path.join(shared_cache, "inductor")})
    child.setdefault("MALLOC_ARENA_MAX", "4")  # glibc reserves 64 MB of address space per thread arena
    if not cuda:
        child["CUDA_VISIBLE_DEVICES"] = ""
    else:  # the default device-memory cap, read by torch's allocator: no torch import in the bootstrap
        conf = child.get("PYTORCH_CUDA_ALLOC_CONF", "")
        cap = f"per_process_memory_fraction:{DEFAULT_DEVICE_MEMORY_FRACTION}"
        child["PYTORCH_CUDA_ALLOC_CONF"] = f"{conf},{cap}" if conf else cap
    return child


def _user_ops_dir() -> str | None:
    from kforge import paths

    ops = paths.home() / "ops"
    return str(ops) if ops.is_dir() else None


@dataclasses.dataclass(frozen=True)
class Launch:
    """How a worker is started: everything about it but its task. Two tasks with equal launches
    can take the same kind of worker, so a spare started for one serves the other (`spares`)."""

    level: Any  # isolation.Level
    cuda: bool
    env_allow: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    sys_path: tuple[str, ...]
    ops_dir: str | None
    shared_cache: str | None = None
    preload: tuple[str, ...] = ()  # modules a spare imports before it is given its task


@dataclasses.dataclass
class Worker:
    """A started worker process waiting for its task on `task_w`, in its own scratch dir."""

    launch: Launch
    proc: subprocess.Popen
    scratch: Any  # isolation.Scratch
    task_w: int
    result_r: int
    info_r: int
    out_path: str
    err_path: str

    def discard(self) -> None:
        """Kill what is left of the worker, close its pipes, remove its scratch dir."""
        try:
            if self.proc.returncode is None and not _exited(self.proc):
                _stop(self.proc, _child_pid(_drain(self.info_r, 1 << 12)))
            self.proc.wait()
        finally:
            for fd in (self.task_w, self.result_r, self.info_r):
                if fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            self.task_w = self.result_r = self.info_r = -1
            self.scratch.remove()


def start_worker(launch: Launch) -> Worker:
    """Start a worker for `launch`: it imports `launch.preload`, then waits for its task."""
    from kforge.evaluate import isolation as iso

    scratch = iso.Scratch()
    try:
        if launch.shared_cache is not None:
            os.makedirs(launch.shared_cache, mode=0o700, exist_ok=True)
        env = sandbox_env(scratch, launch.env_allow, dict(launch.env), launch.cuda, launch.shared_cache)
        if launch.level is iso.Level.PROCESS and launch.ops_dir is not None:
            os.symlink(launch.ops_dir, scratch.path("kforge-home", "ops"))
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        info_r, info_w = os.pipe()
    except BaseException:
        scratch.remove()
        raise
    preload = json.dumps({"modules": list(launch.preload), "sys_path": list(launch.sys_path)}) if launch.preload else ""
    command = [sys.executable, "-c", _BOOTSTRAP, WORKER_FILE, str(result_w), *([preload] if preload else [])]
    if launch.level is iso.Level.BWRAP:
        argv = iso.bwrap_argv(iso.probe().bwrap, command, work=scratch.work, env=env, cuda=launch.cuda,
                              sys_path=launch.sys_path, ops_dir=launch.ops_dir, info_fd=info_w,
                              shared=() if launch.shared_cache is None else (launch.shared_cache,))
        popen_env: dict = {}  # bwrap's own /proc/<pid>/environ is what the worker could read of it
    else:
        argv, popen_env = command, env
    out_path, err_path = os.path.join(scratch.root, "stdout"), os.path.join(scratch.root, "stderr")
    try:
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(argv, cwd=scratch.work, env=popen_env, stdin=task_r, stdout=out, stderr=err,
                                    pass_fds=(result_w, info_w), start_new_session=True, close_fds=True)
    except BaseException:
        for fd in (task_w, result_r, info_r):
            os.close(fd)
        scratch.remove()
        raise
    finally:
        for fd in (task_r, result_w, info_w):
            os.close(fd)
    return Worker(launch, proc, scratch, task_w, result_r, info_r, out_path, err_path)


def launch_for(what: str, *, cuda: bool = False, env_allow: Iterable[str] = DEFAULT_ALLOW,
               env: Mapping[str, str] | None = None, sys_path: Iterable[str] | None = None, trusted: bool = False,
               isolation=None, shared_cache: str | None = None) -> Launch:
    """How a worker for `what` starts (run_isolated's arguments of the same names), checked: a
    denied variable in `env`, a shared cache for untrusted code, untrusted code without bwrap."""
    from kforge.evaluate import isolation as iso

    if shared_cache is not None and not trusted:
        raise ValueError("run_isolated: a shared compile cache is for trusted code only (a candidate could plant "
                         "a compiled kernel another candidate would then load)")
    for name in env or {}:
        if denied(name):
            from kforge.redact import DENY

            raise ValueError(f"run_isolated: {name!r} matches the sandbox's deny-list {DENY}")
    if isolation is None:
        level = iso.require(trusted, what).level
    else:
        level = iso.Level(isolation)
        if level is iso.Level.BWRAP and iso.probe().level is not iso.Level.BWRAP:
            raise iso.SandboxUnavailable(f"run_isolated: isolation=bwrap asked, but {iso.probe().reason}")
    sys_path = tuple(os.path.abspath(p) for p in (sys.path if sys_path is None else sys_path) if p)
    return Launch(level=level, cuda=cuda, env_allow=tuple(env_allow), env=tuple(sorted((env or {}).items())),
                  sys_path=sys_path, ops_dir=_user_ops_dir(), shared_cache=shared_cache)


def _supervise(worker: Worker, text: bytes, timeout_s: float, limit_mb: int) -> WorkerOutcome:
    from kforge.evaluate import isolation as iso

    proc, level, cuda = worker.proc, worker.launch.level, worker.launch.cuda
    result_r, info_r, out_path, err_path = worker.result_r, worker.info_r, worker.out_path, worker.err_path
    task_w, worker.task_w = worker.task_w, -1  # _send closes it
    start = time.monotonic()
    threading.Thread(target=_send, args=(task_w, text), daemon=True).start()
    result, info = bytearray(), bytearray()
    reading = [result_r, info_r]
    why = None  # "timeout" | "memory" | "oversize"
    next_rss = start
    try:
        while why is None:
            for fd in select.select(reading, [], [], POLL_S)[0]:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    reading.remove(fd)
                elif fd == info_r:
                    info += chunk
                elif len(result) + len(chunk) > RESULT_CAP:
                    why = "oversize"
                else:
                    result += chunk
            if why or _exited(proc):
                break
            now = time.monotonic()
            if now - start > timeout_s:
                why = "timeout"
            elif now >= next_rss:
                next_rss = now + RSS_EVERY_S
                if _tree_rss_mb(proc.pid) > limit_mb:
                    why = "memory"
        if why is None:
            result += _drain(result_r, RESULT_CAP - len(result) + 1)
            if len(result) > RESULT_CAP:
                why = "oversize"
        _stop(proc, _child_pid(info))
        code = proc.wait()
    finally:
        worker.result_r = worker.info_r = -1
        os.close(result_r)
        os.close(info_r)
    logs = {"stdout": _tail(out_path), "stderr": _tail(err_path), "pid": proc.pid,
            "duration_s": time.monotonic() - start, "isolation": level.value,
            "exit_code": _exit_code(code, level is iso.Level.BWRAP and why is None)}
    if why == "timeout":
        return WorkerOutcome(Status.TIMEOUT, error=f"no result after {timeout_s:g} s: worker killed", **logs)
    if why == "memory":
        return WorkerOutcome(Status.KILLED, error=f"resident memory over the {limit_mb} MB limit: worker killed", **logs)
    if why == "oversize":
        return WorkerOutcome(Status.CRASHED, error=f"the worker's result is over the {RESULT_CAP >> 20} MB cap: "
                                                   "worker killed, result discarded", **logs)
    if not result:
        code = logs["exit_code"]
        how = f"died of signal {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
        return WorkerOutcome(Status.CRASHED, error=f"worker {how} without a result", **logs)
    parsed, problem = _parse_result(bytes(result))
    if problem:
        return WorkerOutcome(Status.CRASHED, error=f"the worker's result is malformed ({problem}): discarded", **logs)
    if parsed.get("memory"):
        what = DEVICE_MEMORY_CAP if cuda else f"the {limit_mb} MB memory limit"
        return WorkerOutcome(Status.KILLED, error=f"over {what}: {parsed['error']}",
                             traceback=parsed.get("traceback"), **logs)
    return WorkerOutcome(Status(parsed["status"]), value=parsed.get("value"), error=parsed.get("error"),
                         error_types=tuple(parsed.get("error_types", ())), traceback=parsed.get("traceback"), **logs)


def _parse_result(data: bytes) -> tuple[dict | None, str | None]:
    """The worker's result, checked: one JSON object, {"status": "ok", "value": ...} or
    {"status": "error", "error": str, "error_types": [str], "traceback": str | None, "memory": bool}."""
    try:
        result = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"not one JSON document: {type(exc).__name__}"
    if not isinstance(result, dict):
        return None, "not a JSON object"
    keys = {"ok": {"status", "value"},
            "error": {"status", "error", "error_types", "traceback", "memory"}}.get(result.get("status"))
    if keys is None or set(result) != keys:
        return None, f"unexpected status or keys {sorted(result)[:8]}"
    if keys is not None and result["status"] == "error" and not (
            isinstance(result["error"], str) and isinstance(result["traceback"], (str, type(None)))
            and isinstance(result["memory"], bool) and isinstance(result["error_types"], list)
            and all(isinstance(t, str) for t in result["error_types"])):
        return None, "error fields of the wrong types"
    return result, None


def _redacted(outcome: WorkerOutcome, secrets: Mapping[str, str] | None) -> WorkerOutcome:
    from kforge.redact import redact_data

    data = outcome.to_json()
    fields = {name: data[name] for name in ("value", "error", "traceback", "stdout", "stderr")}
    return dataclasses.replace(outcome, **redact_data(fields, extra=secrets))
