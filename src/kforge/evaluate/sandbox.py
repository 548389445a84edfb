"""Run untrusted work (a candidate's compile, correctness and timing) in a fresh worker process.

    outcome = run_isolated("kforge.evaluate.worker_tasks:verify_candidate", {"source": ...}, timeout_s=120)
    outcome.status   # "ok" | "error" | "timeout" | "crashed" | "killed"; outcome.value is JSON data

Why a process: an out-of-bounds store poisons the whole CUDA context of its process, a hang never
returns, `os._exit` ends everything. Nothing untrusted runs in the process that serves or
records results; whatever a task does, `run_isolated` returns an outcome and never raises for it.

The worker is a new Python interpreter (`sys.executable`) that loads this file by path (stdlib
only: no torch import unless the task needs one), reads the task from a JSON file, imports the
function by name ("package.module:function", never a pickled closure), calls it with the payload
and writes its JSON-able return value to a result file. It runs:
- in its own session and process group, killed whole (SIGKILL) on timeout and after it ends, so
  children it started die too (a task that calls setsid itself escapes: use containers for that);
- in a scratch directory, removed afterwards, that is also its TMPDIR;
- with an environment built from an ALLOW-list (`DEFAULT_ALLOW`: paths, locale, CUDA, Triton and
  kforge settings), minus any name matching `DENY` (`*KEY*`, `*TOKEN*`, `*SECRET*`, `AWS_*`, ...),
  which wins even over the allow-list: no LLM API key or token reaches candidate code;
- with the coordinator's `sys.path` entries appended to its own, so test modules import there;
- under a memory limit when `memory_mb` is given: RLIMIT_AS (address space) when the worker will
  not use CUDA (`cuda=False`, which also hides GPUs: CUDA_VISIBLE_DEVICES=""). CUDA maps tens of
  GB of address space at init, so with `cuda=True` an address-space limit would fail every
  task; there the coordinator polls the worker's resident memory instead and kills it above the
  limit. The address space counts what a process maps, not what it touches: torch alone maps
  ~1-3 GB, so give torch tasks several GB.

Statuses: ok (returned a value); error (raised: `error` holds "Type: message", `traceback` the
trace); timeout (past `timeout_s`, killed); crashed (died without a result: a signal such as
SIGSEGV or SIGKILL, `os._exit`, `sys.exit`; `exit_code` is the exit status, or minus the signal
number); killed (stopped for exceeding its memory limit: an allocation refused under RLIMIT_AS,
or the resident-memory watchdog).
"""
from __future__ import annotations

import dataclasses
import enum
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Iterable, Mapping

DEFAULT_ALLOW: tuple[str, ...] = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_*", "TZ", "TERM",
    "TMPDIR", "PYTHONPATH", "PYTHONHASHSEED", "VIRTUAL_ENV", "LD_LIBRARY_PATH",
    "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "CUDA_HOME", "CUDA_PATH", "CUDA_LAUNCH_BLOCKING",
    "NVIDIA_VISIBLE_DEVICES", "TRITON_*", "TORCHINDUCTOR_*", "PYTORCH_*", "TORCH_HOME", "KFORGE_*",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XDG_CACHE_HOME",
    "NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS",
)
# The deny-list (kforge.redact.DENY) is checked after the allow-list and wins over it. Imported
# lazily: the worker loads this file by path, stdlib only, before anything of kforge (whose
# package import pulls in torch).


def denied(name: str) -> bool:
    from kforge.redact import denied as is_denied

    return is_denied(name)


OUTPUT_TAIL = 8000  # characters of the worker's stdout and stderr kept in an outcome
POLL_S = 0.01


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
    exit_code: int | None = None  # the worker's exit status; minus the signal number if signalled
    duration_s: float = 0.0
    traceback: str | None = None
    stdout: str = ""  # tails, OUTPUT_TAIL characters at most
    stderr: str = ""
    pid: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))

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
                 sys_path: Iterable[str] | None = None) -> WorkerOutcome:
    """Run `fn_qualname(payload)` ("package.module:function") in a fresh worker process.

    timeout_s: wall-clock limit, then the worker's process group is killed. memory_mb: see the
    module docstring. env: variables set in the worker on top of the allowed ones (the executors
    set CUDA_VISIBLE_DEVICES); a denied name here is a ValueError. cuda: the task uses the GPU.
    sys_path: appended to the worker's sys.path (default: this process's). Raises only for the
    caller's own mistakes (a malformed name, a payload that is not JSON data)."""
    module, _, attr = fn_qualname.partition(":")
    if not module or not attr:
        raise ValueError(f"fn_qualname must be 'package.module:function', got {fn_qualname!r}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    for name in env or {}:
        if denied(name):
            from kforge.redact import DENY

            raise ValueError(f"run_isolated: {name!r} matches the sandbox's deny-list {DENY}")
    scratch = tempfile.mkdtemp(prefix="kforge-sandbox-")
    try:
        task = {"fn": fn_qualname, "payload": payload, "memory_mb": memory_mb if not cuda else None,
                "sys_path": [os.path.abspath(p) for p in (sys.path if sys_path is None else sys_path) if p],
                "result": os.path.join(scratch, "result.json")}
        task_file = os.path.join(scratch, "task.json")
        with open(task_file, "w") as f:
            try:
                json.dump(task, f)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"run_isolated: payload must be JSON data ({exc})") from None
        child_env = worker_env(env_allow)
        child_env.update(env or {})
        child_env["TMPDIR"] = scratch
        child_env[IN_SANDBOX] = "1"  # user ops from untrusted sources load their code only here
        if not cuda:
            child_env["CUDA_VISIBLE_DEVICES"] = ""
        return _supervise(task, task_file, scratch, child_env, timeout_s, memory_mb if cuda else None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


IN_SANDBOX = "KFORGE_IN_SANDBOX"


def _supervise(task: dict, task_file: str, scratch: str, env: dict, timeout_s: float,
               rss_limit_mb: int | None) -> WorkerOutcome:
    start = time.monotonic()
    out_path, err_path = os.path.join(scratch, "stdout"), os.path.join(scratch, "stderr")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", _BOOTSTRAP, os.path.abspath(__file__), task_file],
                                cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True, close_fds=True)
    timed_out = over_memory = False
    while True:
        if _exited(proc):
            break
        if time.monotonic() - start > timeout_s:
            timed_out = True
            break
        if rss_limit_mb is not None and _rss_mb(proc.pid) > rss_limit_mb:
            over_memory = True
            break
        time.sleep(POLL_S)
    _kill_group(proc.pid)
    code = proc.wait()
    duration = time.monotonic() - start
    logs = {"stdout": _tail(out_path), "stderr": _tail(err_path), "pid": proc.pid, "duration_s": duration,
            "exit_code": code}
    if timed_out:
        return WorkerOutcome(Status.TIMEOUT, error=f"no result after {timeout_s:g} s: worker killed", **logs)
    if over_memory:
        return WorkerOutcome(Status.KILLED, error=f"resident memory over the {rss_limit_mb} MB limit: worker killed",
                             **logs)
    result = _read_result(task["result"])
    if result is None:
        how = f"died of signal {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
        return WorkerOutcome(Status.CRASHED, error=f"worker {how} without a result", **logs)
    if result.get("memory"):
        return WorkerOutcome(Status.KILLED, error=f"over the {task['memory_mb']} MB memory limit: {result['error']}",
                             traceback=result.get("traceback"), **logs)
    return WorkerOutcome(Status(result["status"]), value=result.get("value"), error=result.get("error"),
                         traceback=result.get("traceback"), **logs)


def _exited(proc: subprocess.Popen) -> bool:
    if hasattr(os, "waitid"):
        # WNOWAIT leaves the worker a zombie until the group is killed, so its pid (the group id)
        # cannot pass to another process meanwhile.
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    return proc.poll() is not None  # pragma: no cover - platforms without waitid


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - OUTPUT_TAIL))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _read_result(path: str) -> dict | None:
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("status") in ("ok", "error") else None


def _signal_name(number: int) -> str:
    try:
        return f"{signal.Signals(number).name} ({number})"
    except ValueError:
        return str(number)


# -- the worker side (runs in the child; stdlib only above this line too) --------------------------
_BOOTSTRAP = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("_kforge_sandbox_worker", sys.argv[1])
worker = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(worker)
worker.worker_main(sys.argv[2])
"""


def worker_main(task_file: str) -> None:
    """Entry point inside the worker: run the task in `task_file`, write the result, `os._exit`."""
    with open(task_file) as f:
        task = json.load(f)
    sys.path.extend(p for p in task["sys_path"] if p not in sys.path)
    limit = task.get("memory_mb")
    if limit:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit << 20, limit << 20))
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core file behind
    except (ImportError, ValueError, OSError):
        pass
    try:
        import importlib

        module, _, attr = task["fn"].partition(":")
        fn: Any = importlib.import_module(module)
        for part in attr.split("."):
            fn = getattr(fn, part)
        value = fn(task["payload"])
        try:
            text = json.dumps({"status": "ok", "value": value})
        except (TypeError, ValueError) as exc:
            raise TypeError(f"the task's return value is not JSON data: {exc}") from None
    except SystemExit as exc:  # a task that exits is a crash, with its exit code, like os._exit
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        _flush()
        os._exit(code)
    except BaseException as exc:
        text = json.dumps({"status": "error", "error": f"{type(exc).__name__}: {exc}",
                           "traceback": traceback.format_exc(), "memory": bool(limit) and _is_memory(exc)})
    tmp = task["result"] + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, task["result"])  # a worker killed mid-write leaves no result, not half of one
    _flush()
    os._exit(0)  # no interpreter teardown: a poisoned CUDA context can hang or crash in it


def _is_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "can't allocate memory" in str(exc) or \
        type(exc).__name__ == "OutOfMemoryError"


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


if __name__ == "__main__":  # python -m kforge.evaluate.sandbox TASK_FILE (run_isolated uses the bootstrap)
    worker_main(sys.argv[1])
