"""The worker side of `kforge.evaluate.sandbox`: runs inside the sandboxed interpreter, loaded by
path before anything of kforge (stdlib only: the kforge package import pulls in torch).

    python -c BOOTSTRAP .../sandbox_worker.py RESULT_FD [PRELOAD]    (task JSON on stdin)

PRELOAD (a spare worker, `kforge.evaluate.spares`): JSON {"modules": [...], "sys_path": [...]},
imported before the task is read, so the task finds torch and kforge already imported.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any


def worker_main(result_fd: int, preload: str = "") -> None:
    """Entry point inside the worker: import `preload`'s modules, read the task from stdin, run
    it, write the result to `result_fd`, `os._exit`."""
    if preload:
        _preload(json.loads(preload))
    chunks = []
    while True:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    task = json.loads(b"".join(chunks))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.set_inheritable(result_fd, False)  # programs the task starts do not get the result pipe
    sys.path.extend(p for p in task["sys_path"] if p not in sys.path)
    import resource

    limit = task.get("memory_mb")
    if limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit << 20, limit << 20))  # hard too: no raising it back
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core file behind
    capped = False
    try:
        capped = _cap_device_memory(task.get("device_memory_mb"))
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
                           "error_types": exception_types(exc), "traceback": traceback.format_exc(),
                           "memory": bool(limit or capped) and _is_memory(exc)})
    _flush()
    data = memoryview(text.encode())
    while data:
        data = data[os.write(result_fd, data):]
    os.close(result_fd)
    os._exit(0)  # no interpreter teardown: a poisoned CUDA context can hang or crash in it


def _preload(plan: dict) -> None:
    """Import what the spare's task will need. A module that fails here is left for the task's own
    import to report, with its traceback, as a cold worker would."""
    import importlib

    sys.path.extend(p for p in plan.get("sys_path", ()) if p not in sys.path)
    for name in plan.get("modules", ()):
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - the task reports it
            pass


def exception_types(exc: BaseException, limit: int = 8) -> list[str]:
    """The qualified type names of `exc` and of the exceptions it was raised from, outermost first
    ("kforge.candidate.CandidateImportError", "builtins.SyntaxError"): what a caller may branch on
    instead of the message's text."""
    names: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(names) < limit:
        seen.add(id(exc))
        names.append(f"{type(exc).__module__}.{type(exc).__qualname__}")
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return names


def _cap_device_memory(mb: int | None) -> bool:
    """Cap the caching allocator at `mb` on every visible GPU before the task runs (imports torch;
    without `mb` the default share is in PYTORCH_CUDA_ALLOC_CONF). True when a cap is in force."""
    if not mb:
        return "per_process_memory_fraction" in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    import torch

    for index in range(torch.cuda.device_count()):
        total = torch.cuda.get_device_properties(index).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, (mb << 20) / total), index)
    return True


def _is_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "can't allocate memory" in str(exc) or \
        type(exc).__name__ == "OutOfMemoryError"


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
