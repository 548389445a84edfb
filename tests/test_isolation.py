"""kforge.evaluate.isolation: what code in a worker can do under bubblewrap (issue 14, class 2).
Inside a worker: writing KFORGE_HOME, starting a daemon that outlives it, reading the parent's
environment, opening a socket, finding a task file, forging a result and exhausting memory all
fail or are contained; a worker whose coordinator is SIGKILLed dies, and its scratch dir goes at
the next start; where bwrap cannot run, untrusted code is refused."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from kforge.evaluate import isolation
from kforge.evaluate.isolation import Isolation, Level, SandboxUnavailable
from kforge.evaluate.sandbox import Status, run_isolated

TESTS = Path(__file__).resolve().parent
bwrap_only = pytest.mark.skipif(isolation.probe().level is not Level.BWRAP,
                                reason=f"bwrap cannot run here: {isolation.probe().reason}")


def task(name: str, payload=None, **kwargs):
    kwargs.setdefault("timeout_s", 60)
    return run_isolated(f"sandbox_tasks:{name}", payload or {}, **kwargs)


def marked_pids(marker: str) -> list[int]:
    """Live processes whose command line names `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z" and int(entry) != os.getpid():
            found.append(int(entry))
    return found


def descendants(root: int) -> set[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = set(), [root]
    while frontier:
        current = frontier.pop()
        for pid, parent in parents.items():
            if parent == current and pid not in found:
                found.add(pid)
                frontier.append(pid)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@bwrap_only
def test_a_worker_cannot_write_the_coordinators_kforge_home(kforge_home):
    kforge_home.mkdir(parents=True, exist_ok=True)
    elsewhere = [os.path.expanduser("~"), os.path.expanduser("~/.local/share/kforge"), str(TESTS), "/usr", "/"]
    out = task("worker_writes_home", {"home": str(kforge_home), "elsewhere": elsewhere})
    assert out.ok and out.isolation == "bwrap"
    assert list(kforge_home.rglob("*")) == []  # nothing planted in the coordinator's KFORGE_HOME
    # Outside its scratch dir (and its private /tmp, where the test's KFORGE_HOME path lies) no
    # write succeeds: the user's home and default KFORGE_HOME, the source tree, the system.
    assert not [p for p in out.value["wrote"] if not p.startswith("/tmp/")]
    assert len(out.value["errors"]) == len(elsewhere)
    assert out.value["own_home"] != str(kforge_home)  # the worker's KFORGE_HOME is a fresh one


@bwrap_only
def test_a_setsid_daemon_does_not_survive_its_worker():
    marker = f"kforge-test-daemon-{os.getpid()}-{time.monotonic_ns()}"
    out = task("worker_setsid_daemon", {"marker": marker})
    assert out.ok and out.value["daemon_writing"]
    assert marked_pids(marker) == []  # gone when run_isolated returns: the PID namespace died with it


@bwrap_only
def test_a_worker_reads_no_secret_of_the_coordinators_environment(monkeypatch):
    secret = "sk-ant-fake-0123456789abcdef"
    monkeypatch.setenv("ANTHROPIC_API_KEY", secret)
    out = task("worker_reads_parent_env")
    assert out.ok
    assert out.value["secret_names"] == []  # no process it can see holds one, its parent included
    assert out.value["ppid"] == 1  # bwrap's init in its own PID namespace, not the coordinator
    assert secret not in json.dumps(out.to_json())


@bwrap_only
def test_a_worker_cannot_reach_a_loopback_server():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(5)
    accepted = []
    threading.Thread(target=lambda: accepted.append(_accept(server)), daemon=True).start()
    try:
        out = task("worker_connects", {"port": server.getsockname()[1]})
    finally:
        server.close()
    assert out.ok and not out.value["connected"], out.value
    assert accepted in ([], [None])


def _accept(server):
    try:
        return server.accept()
    except OSError:
        return None


@bwrap_only
def test_there_is_no_task_file_to_read():
    marker = f"kforge-task-marker-{time.monotonic_ns()}"
    out = task("worker_looks_for_task_file", {"marker": marker})
    assert out.ok and out.value["hits"] == []


def test_allocating_6_gib_is_killed_by_the_default_limit_and_the_coordinator_goes_on():
    out = task("worker_allocates_and_touches", {"mb": 6144})
    assert out.status is Status.KILLED and "memory limit" in out.error
    assert task("returns", {"i": 1}).ok


def test_the_resident_memory_watchdog_kills_a_gpu_task_over_its_limit():
    out = task("worker_allocates_and_touches", {"mb": 512}, cuda=True, memory_mb=160)
    assert out.status is Status.KILLED and "160 MB" in out.error


def test_a_result_printed_to_stdout_does_not_change_the_outcome():
    out = task("worker_forges_stdout_result")
    assert out.status is Status.ERROR and out.error == "ValueError: the real outcome"
    assert '"accepted": true' in out.stdout


def test_a_forged_document_on_the_result_pipe_is_a_crash():
    out = task("worker_forges_result_pipe")
    assert out.status is Status.CRASHED and "malformed" in out.error and out.value is None


def test_a_result_over_the_size_cap_is_a_clear_failure():
    out = task("worker_huge_result", {"bytes": 17 << 20})
    assert out.status is Status.CRASHED and "over the 16 MB cap" in out.error and out.value is None
    assert task("worker_huge_result", {"bytes": 1000}).value == "x" * 1000


@pytest.mark.parametrize("raises", [False, True])
def test_secrets_are_redacted_from_every_field_of_an_outcome(monkeypatch, raises):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-fake-987654321")
    for secret, extra in (("sk-openai-fake-987654321", None), ("4242424242424242", {"secret seed": "4242424242424242"})):
        out = task("worker_leaks_secrets", {"secret": secret, "raise": raises}, secrets=extra)
        text = json.dumps(out.to_json())
        assert secret not in text and "[redacted" in text
        assert "[redacted" in out.stdout and "[redacted" in out.stderr
        assert ("[redacted" in out.error) if raises else ("[redacted" in json.dumps(out.value))


@bwrap_only
def test_a_worker_dies_with_its_killed_coordinator_and_its_scratch_goes_at_the_next_start(tmp_path, monkeypatch):
    suffix = f"{os.getpid()}-{time.monotonic_ns()}"
    marker = f"kforge-test-spin-{suffix}"
    tmp = tmp_path / "coordinator-tmp"
    tmp.mkdir()
    code = ("import sys; from kforge.evaluate.sandbox import run_isolated; "  # the marker whole only in the worker
            f"run_isolated('sandbox_tasks:worker_spins', {{'marker': 'kforge-test-spin-' + {suffix!r}}}, "
            "timeout_s=300, sys_path=sys.path)")
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    coordinator = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 60
        while not marked_pids(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marked_pids(marker), "the worker never started"
        workers = descendants(coordinator.pid)
        assert len(workers) >= 3  # bwrap, its init, the worker (and the worker's daemon)
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait()
        deadline = time.monotonic() + 10
        while any(alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(p) for p in workers) and marked_pids(marker) == []
    finally:
        coordinator.kill()
    left = list(tmp.glob("kforge-sandbox-*/w-*"))
    assert len(left) == 1  # the killed coordinator's scratch dir, unlocked now
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setattr(isolation, "_cleaned", set())
    assert task("returns", {"i": 0}).ok  # a new start cleans what the killed one left
    assert list(tmp.glob("kforge-sandbox-*/w-*")) == []


def test_untrusted_code_is_refused_where_bwrap_cannot_run(monkeypatch):
    monkeypatch.setattr(isolation, "probe", lambda: Isolation(Level.PROCESS, reason="bwrap (bubblewrap) is not installed"))
    monkeypatch.delenv(isolation.UNSAFE_ENV, raising=False)
    with pytest.raises(SandboxUnavailable, match="bubblewrap.*apt-get install -y bubblewrap.*--unsafe-no-sandbox"):
        task("returns")
    assert task("returns", trusted=True).isolation == "process"  # kforge's own code runs anyway
    monkeypatch.setenv(isolation.UNSAFE_ENV, "1")
    out = task("returns")
    assert out.ok and out.isolation == "process"
    assert "RUN UNSANDBOXED" in isolation.probe().describe()


def test_the_catalog_seeds_are_the_trusted_sources():
    from kforge import paths

    seed = (paths.PACKAGE_DIR / "catalog" / "rms_norm_rowwise.py").read_text()
    assert isolation.is_catalog_seed(seed)
    assert not isolation.is_catalog_seed(seed + "\n# edited\n")


def test_hidden_paths_are_never_bound_and_are_covered_when_a_bound_path_holds_them(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / ".kforge").mkdir(parents=True)
    monkeypatch.setenv("KFORGE_HOME", str(repo / ".kforge"))
    argv = isolation.bwrap_argv("/usr/bin/bwrap", ["true"], work=str(tmp_path / "w"), env={}, cuda=False,
                                sys_path=[str(repo), "/", os.path.expanduser("~"), str(repo / ".kforge")])
    binds = {argv[i + 1] for i, a in enumerate(argv) if a == "--ro-bind"}
    assert str(repo) in binds and "/" not in binds and os.path.expanduser("~") not in binds
    assert str(repo / ".kforge") not in binds
    assert argv[argv.index(str(repo / ".kforge")) - 1] == "--tmpfs"
    assert "--unshare-all" in argv and "--clearenv" in argv and "--die-with-parent" in argv


@bwrap_only
def test_code_under_tmp_is_visible_in_the_worker(tmp_path):
    """A checkout or venv under /tmp (`git clone ... /tmp/x`): the worker's private /tmp must not
    hide it (it did: `bwrap: execvp /tmp/x/.venv/bin/python: No such file or directory`)."""
    assert str(tmp_path).startswith("/tmp/")
    (tmp_path / "under_tmp_task.py").write_text("def answer(payload):\n    return payload['x'] * 2\n")
    outcome = run_isolated("under_tmp_task:answer", {"x": 21}, timeout_s=60, sys_path=[str(tmp_path)], trusted=True)
    assert outcome.ok, outcome.stderr
    assert outcome.value == 42
