"""kforge.evaluate.sandbox: whatever a task does (return, raise, hang, exit, die of a signal,
allocate too much), the coordinator gets an outcome, never an exception; the worker sees an
allow-listed environment with no API keys; a timeout kills the whole process group."""
from __future__ import annotations

import os
import time

import pytest

from kforge.evaluate import isolation
from kforge.evaluate.isolation import Level
from kforge.evaluate.sandbox import Status, WorkerOutcome, run_isolated, worker_env
from kforge.redact import DENY
from test_isolation import marked_pids


def task(name: str, payload=None, **kwargs) -> WorkerOutcome:
    kwargs.setdefault("timeout_s", 30)
    return run_isolated(f"sandbox_tasks:{name}", payload or {}, **kwargs)


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone: it runs nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_returned_value_comes_back_as_json_data():
    out = task("returns", {"n": [1, 2.5, "x"]})
    assert out.status is Status.OK and out.status == "ok" and out.ok
    assert out.value["echo"] == {"n": [1, 2.5, "x"]}
    assert out.pid != os.getpid() and isinstance(out.value["pid"], int)  # its own PID namespace under bwrap
    assert out.exit_code == 0 and out.error is None and out.duration_s > 0
    assert WorkerOutcome.from_json(out.to_json()) == out


def test_a_raised_exception_is_an_error_with_its_message():
    out = task("raises", {"message": "kernel exploded"})
    assert out.status is Status.ERROR
    assert out.error == "ValueError: kernel exploded" and out.error_types == ("builtins.ValueError",)
    assert WorkerOutcome.from_json(out.to_json()) == out
    assert "sandbox_tasks.py" in out.traceback and "raise ValueError" in out.traceback


def test_a_value_that_is_not_json_is_an_error():
    out = task("unjsonable")
    assert out.status is Status.ERROR and "not JSON data" in out.error


@pytest.mark.parametrize("level", ["bwrap", "process"])
def test_timeout_kills_the_worker_and_its_children(tmp_path, level):
    if level == "bwrap" and isolation.probe().level is not Level.BWRAP:
        pytest.skip(isolation.probe().reason)
    marker = f"kforge-test-grandchild-{os.getpid()}-{time.monotonic_ns()}"
    start = time.monotonic()
    out = task("sleeps", {"marker": marker, "seconds": 600}, timeout_s=1.0, isolation=level)
    assert out.status is Status.TIMEOUT and "1 s" in out.error
    assert 1.0 <= out.duration_s < 10 and time.monotonic() - start < 10
    assert not alive(out.pid)
    # The grandchild went too: with bwrap the PID namespace is gone when run_isolated returns;
    # without, SIGKILL to the process group reaches it asynchronously (a loaded machine can take
    # a moment).
    deadline = time.monotonic() + (0 if level == "bwrap" else 5)
    while marked_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marked_pids(marker) == []


@pytest.mark.parametrize("name, payload, code, words", [
    ("exits", {"code": 3}, 3, "exited with code 3"),
    ("sys_exits", {"code": 4}, 4, "exited with code 4"),
    ("kills_itself", {}, -9, "SIGKILL"),
    ("segfaults", {}, -11, "SIGSEGV"),
])
def test_crashes_are_reported_with_their_exit_code(name, payload, code, words):
    out = task(name, payload)
    assert out.status is Status.CRASHED
    assert out.exit_code == code and words in out.error and out.value is None


def test_no_api_key_or_token_reaches_the_worker(monkeypatch):
    secrets = {"ANTHROPIC_API_KEY": "sk-ant-x", "OPENAI_API_KEY": "sk-x", "GITHUB_TOKEN": "ghp_x",
               "AWS_SECRET_ACCESS_KEY": "a", "AWS_ACCESS_KEY_ID": "b", "HF_TOKEN": "c", "MY_SERVICE_SECRET": "d",
               "KFORGE_API_KEY": "e", "TRITON_AUTH_TOKEN": "f", "UNLISTED_VARIABLE": "g"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    out = task("environ")
    assert out.ok
    env = out.value["env"]
    assert not set(secrets) & set(env)
    assert not any(value in env.values() for value in secrets.values())
    assert env["TRITON_INTERPRET"] == "1" and env["PATH"] == os.environ["PATH"]
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # cuda=False hides GPUs
    # The scratch dir is the worker's cwd, TMPDIR, HOME and a fresh KFORGE_HOME, and holds its caches.
    scratch = out.value["cwd"]
    assert env["TMPDIR"] == scratch and env["KFORGE_HOME"] != os.environ["KFORGE_HOME"]
    for name in ("HOME", "KFORGE_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR"):
        assert env[name].startswith(scratch + "/")
    assert not os.path.exists(scratch)  # the scratch dir is removed afterwards


def test_env_filter_and_explicit_variables():
    source = {"PATH": "/bin", "LC_ALL": "C", "TRITON_CACHE_DIR": "/c", "OPENAI_API_KEY": "k", "KFORGE_TOKEN": "t",
              "EDITOR": "vi", "triton_api_key": "lower"}
    assert worker_env(source=source) == {"PATH": "/bin", "LC_ALL": "C", "TRITON_CACHE_DIR": "/c"}
    assert worker_env(("EDITOR", "*_KEY"), source=source) == {"EDITOR": "vi"}  # deny wins over allow
    assert "*TOKEN*" in DENY
    with pytest.raises(ValueError, match="deny-list"):
        task("environ", env={"GITHUB_TOKEN": "x"})
    out = task("environ", env={"CUDA_VISIBLE_DEVICES": "1"}, cuda=True)
    assert out.value["env"]["CUDA_VISIBLE_DEVICES"] == "1"


def test_memory_limit_stops_a_task_allocating_too_much():
    out = task("allocates", {"mb": 2048}, memory_mb=256)
    assert out.status is Status.KILLED and "256 MB" in out.error and "MemoryError" in out.error, out.error
    assert task("allocates", {"mb": 16}, memory_mb=256).value == 16 << 20


def test_output_is_kept_as_bounded_tails():
    out = task("chatty")
    assert out.ok and len(out.stdout) <= 8000 and out.stdout.strip().endswith("x")
    assert out.stderr.strip() == "the end"


def test_callers_mistakes_raise():
    with pytest.raises(ValueError, match="package.module:function"):
        run_isolated("sandbox_tasks.returns", {}, timeout_s=1)
    with pytest.raises(ValueError, match="JSON data"):
        run_isolated("sandbox_tasks:returns", {"x": object()}, timeout_s=1)
    out = task("no_such_function")
    assert out.status is Status.ERROR and "AttributeError" in out.error
