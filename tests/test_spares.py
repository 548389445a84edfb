"""kforge.evaluate.spares: a worker started and imported before its task, with the isolation of a
cold one: one task per process, a fresh scratch dir, nothing a previous task left behind, idle
spares killed at close, the wall-clock limit counted from the task's start; the shared compile
cache only for trusted code."""
from __future__ import annotations

import os
import time

import pytest

from kforge.evaluate import isolation
from kforge.evaluate.executors import LocalPoolExecutor, Task
from kforge.evaluate.sandbox import Status, run_isolated
from kforge.evaluate.spares import Spares

MARKER_MODULE = "xml.dom.minidom"  # imported by no worker unless preloaded


def probe(**payload) -> Task:
    return Task("sandbox_tasks:spare_probe", {"modules": [MARKER_MODULE], **payload}, 30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_second_task_gets_a_preloaded_spare_and_a_fresh_process():
    spares = Spares(preload=(MARKER_MODULE,))
    try:
        first = run_isolated("sandbox_tasks:spare_probe", {"modules": [MARKER_MODULE]}, timeout_s=30, spares=spares)
        assert spares.idle() == 1  # started while the first ran
        time.sleep(0.5)
        second = run_isolated("sandbox_tasks:spare_probe", {"modules": [MARKER_MODULE]}, timeout_s=30, spares=spares)
    finally:
        spares.close()
    assert first.ok and second.ok, (first.error, second.error)
    assert first.value["imported"] == []  # cold: nothing preloaded
    assert second.value["imported"] == [MARKER_MODULE]
    assert first.pid != second.pid and first.value["home"] != second.value["home"]  # pid: the coordinator's view
    assert spares.started == 2 and spares.taken == 1


def test_a_spare_sees_nothing_the_previous_task_left():
    """Files in its home die with the previous task's scratch dir, a daemon with its sandbox."""
    import subprocess

    marker = "kforge-spare-daemon-7c1e"
    with LocalPoolExecutor([], workers=1, warm=True) as pool:
        (first,) = pool.map([probe(leave=marker)])
        time.sleep(0.3)
        daemon = subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0
        (second,) = pool.map([probe()])
    assert first.ok and second.ok, (first.error, second.error)
    assert second.value["left_over"] == [] and second.value["home"] != first.value["home"]
    assert not os.path.exists(first.value["home"])  # the scratch dir went with the first task
    if isolation.probe().level is isolation.Level.BWRAP:  # killed with the first task's PID namespace
        assert not daemon


def test_close_kills_idle_spares_and_removes_their_scratch_dirs():
    spares = Spares(preload=())
    run_isolated("sandbox_tasks:returns", {}, timeout_s=30, spares=spares)
    (worker,) = [w for ws in spares._idle.values() for w in ws]
    pid, root = worker.proc.pid, worker.scratch.root
    assert _alive(pid) and os.path.isdir(root)
    spares.close()
    assert not os.path.exists(root)
    assert worker.proc.returncode is not None  # reaped
    spares.refill(worker.launch)  # closed: starts nothing
    assert spares.idle() == 0


def test_a_spare_that_died_idle_is_replaced_by_a_cold_start():
    spares = Spares(preload=())
    try:
        run_isolated("sandbox_tasks:returns", {}, timeout_s=30, spares=spares)
        (worker,) = [w for ws in spares._idle.values() for w in ws]
        os.killpg(worker.proc.pid, 9)
        worker.proc.wait()
        out = run_isolated("sandbox_tasks:returns", {"i": 1}, timeout_s=30, spares=spares)
    finally:
        spares.close()
    assert out.ok and out.value["echo"] == {"i": 1} and out.pid != worker.proc.pid
    assert spares.taken == 0


def test_the_time_limit_counts_from_the_task_not_from_the_spares_start():
    spares = Spares(preload=())
    try:
        run_isolated("sandbox_tasks:returns", {}, timeout_s=30, spares=spares)
        time.sleep(2.0)  # the spare idles longer than the next task's limit
        quick = run_isolated("sandbox_tasks:returns", {}, timeout_s=1.5, spares=spares)
        slow = run_isolated("sandbox_tasks:sleeps", {"seconds": 30}, timeout_s=1.0, spares=spares)
    finally:
        spares.close()
    assert quick.ok and spares.taken >= 1
    assert slow.status is Status.TIMEOUT and slow.duration_s < 10


def test_the_shared_cache_is_for_trusted_code_only(tmp_path):
    shared = str(tmp_path / "shared-cache")
    with pytest.raises(ValueError, match="trusted code only"):
        run_isolated("sandbox_tasks:returns", {}, timeout_s=30, shared_cache=shared, trusted=False)
    one = run_isolated("sandbox_tasks:spare_probe", {"cache_file": "k1"}, timeout_s=30, shared_cache=shared,
                       trusted=True)
    two = run_isolated("sandbox_tasks:spare_probe", {"cache_file": "k2"}, timeout_s=30, shared_cache=shared,
                       trusted=True)
    assert one.ok and two.ok, (one.error, two.error)
    assert one.value["triton_cache"] == os.path.join(shared, "triton")
    assert two.value["cache_before"] == ["k1"]  # kept across workers
    # An untrusted task through the pool gets its own cache, and (under bwrap) cannot see the shared one.
    with LocalPoolExecutor([], workers=1) as pool:
        (other,) = pool.map([Task("sandbox_tasks:spare_probe", {"peek": shared}, 30)])
    assert other.ok and other.value["triton_cache"] != os.path.join(shared, "triton")
    if isolation.probe().level is isolation.Level.BWRAP:
        assert other.value["peek_visible"] is False


def test_the_pool_shares_the_cache_among_trusted_tasks_only(kforge_home):
    from kforge import paths

    with LocalPoolExecutor([], workers=1) as pool:
        trusted, untrusted = pool.map([Task("sandbox_tasks:spare_probe", {}, 30, trusted=True),
                                       Task("sandbox_tasks:spare_probe", {}, 30)])
    assert trusted.value["triton_cache"] == os.path.join(str(paths.worker_cache_dir()), "triton")
    assert untrusted.value["triton_cache"] != trusted.value["triton_cache"]


def test_spares_refuse_nonsense_limits():
    with pytest.raises(ValueError, match="per_launch"):
        Spares(per_launch=0)


def test_warm_up_starts_a_spare_the_first_matching_task_takes():
    with LocalPoolExecutor([], workers=1, warm=True) as pool:
        pool.warm_up(trusted=True)
        assert pool.spares.idle() == 1
        time.sleep(0.3)
        (first,) = pool.map([Task("sandbox_tasks:returns", {}, 30, trusted=True)])
        assert first.ok and pool.spares.taken == 1
    assert pool.spares.idle() == 0  # closed with the pool


def test_a_spare_warmed_for_trusted_code_is_never_given_to_untrusted_code():
    """Its launch mounts the seeds' shared compile cache: an untrusted task starts its own worker."""
    with LocalPoolExecutor([], workers=1, warm=True) as pool:
        pool.warm_up(trusted=True)
        time.sleep(0.2)
        (other,) = pool.map([Task("sandbox_tasks:spare_probe", {}, 30)])
        assert other.ok and pool.spares.taken == 0
    assert "trusted-workers" not in other.value["triton_cache"]


@pytest.mark.skipif(isolation.probe().level is not isolation.Level.BWRAP, reason="needs bwrap")
def test_a_running_task_cannot_see_the_spare_started_beside_it():
    """The next task's spare starts while this task runs; under bwrap this task sees its own scratch
    dir in the sandbox base and nothing of the spare's."""
    base = isolation.scratch_base()
    spares = Spares(preload=())
    try:
        out = run_isolated("sandbox_tasks:spare_probe", {"list_after": {"seconds": 0.5, "dir": base}},
                           timeout_s=30, spares=spares)
        assert spares.idle() == 1
        (spare,) = [w for ws in spares._idle.values() for w in ws]
    finally:
        spares.close()
    assert out.ok, out.error
    assert os.path.basename(spare.scratch.root) not in out.value["listed"]
    assert len(out.value["listed"]) == 1  # its own
