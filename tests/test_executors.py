"""kforge.evaluate.executors: one interface, outcomes in task order, a crashing task costs only
itself; the local pool runs one task at a time per GPU and spreads tasks over GPUs; Ray (when
installed) evaluates a batch on a local instance."""
from __future__ import annotations

import time

import pytest

from kforge.evaluate.executors import InProcessExecutor, LocalPoolExecutor, RayExecutor, Task, make_executor
from kforge.evaluate.sandbox import Status


def batch_with_a_crash() -> list[Task]:
    return [Task("sandbox_tasks:returns", {"i": 0}, 30), Task("sandbox_tasks:segfaults", {}, 30),
            Task("sandbox_tasks:returns", {"i": 2}, 30), Task("sandbox_tasks:returns", {"i": 3}, 30)]


def test_local_pool_survives_a_crashing_task_and_keeps_order():
    with LocalPoolExecutor(workers=2) as pool:
        outcomes = pool.map(batch_with_a_crash())
        again = pool.map([Task("sandbox_tasks:returns", {"i": 9}, 30)])  # the pool still works
    assert [o.status for o in outcomes] == [Status.OK, Status.CRASHED, Status.OK, Status.OK]
    assert [o.value["echo"]["i"] for o in outcomes if o.ok] == [0, 2, 3]
    assert outcomes[1].exit_code == -11
    assert len({o.pid for o in outcomes}) == 4  # a fresh process per task
    assert again[0].value["echo"] == {"i": 9}


def test_local_pool_runs_one_task_per_gpu_at_a_time_across_gpus():
    """devices=[0, 1]: each task sees one GPU in CUDA_VISIBLE_DEVICES, tasks on one GPU never
    overlap, and both GPUs work at once (no GPU needed: the tasks only sleep)."""
    tasks = [Task("sandbox_tasks:device_span", {"seconds": 0.4, "index": i}, 30) for i in range(4)]
    start = time.monotonic()
    with LocalPoolExecutor(devices=[0, "cuda:1"]) as pool:
        outcomes = pool.map(tasks)
    elapsed = time.monotonic() - start
    spans = [o.value for o in outcomes]
    assert [s["index"] for s in spans] == [0, 1, 2, 3]
    assert {s["device"] for s in spans} == {"0", "1"}
    for device in ("0", "1"):
        mine = sorted((s["start"], s["end"]) for s in spans if s["device"] == device)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(mine, mine[1:]))
    assert elapsed < 4 * 0.4  # concurrent across the two GPUs


def test_concurrent_maps_share_the_pools_gpus():
    """Two searches mapping on one pool from two threads at once (the demo runs its ops' searches
    so): each task gets a GPU of its own, not the first GPU of each map's own view of the pool."""
    import concurrent.futures

    def one(index: int) -> list:
        return pool.map([Task("sandbox_tasks:device_span", {"seconds": 0.5, "index": index}, 30)])

    with LocalPoolExecutor(devices=[0, "cuda:1"]) as pool, concurrent.futures.ThreadPoolExecutor(2) as threads:
        spans = [o.value for f in [threads.submit(one, 0), threads.submit(one, 1)] for o in f.result()]
    assert sorted(s["index"] for s in spans) == [0, 1]
    (a, b) = sorted(spans, key=lambda s: s["start"])
    assert a["device"] != b["device"] or a["end"] <= b["start"], spans


def test_local_pool_maps_indices_through_the_parents_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    with LocalPoolExecutor(devices=[1]) as pool:
        assert pool.slots == ["7"]
    with pytest.raises(ValueError, match="twice"):
        LocalPoolExecutor(devices=[0, "cuda:0"])


def test_in_process_executor():
    outcomes = InProcessExecutor().map([Task("sandbox_tasks:returns", {"i": 1}, 5),
                                        Task("sandbox_tasks:raises", {"message": "no"}, 5)])
    assert outcomes[0].ok and outcomes[0].value["echo"] == {"i": 1}
    assert outcomes[1].status is Status.ERROR and outcomes[1].error == "ValueError: no"


def test_make_executor_names_the_valid_kinds():
    assert isinstance(make_executor("inprocess"), InProcessExecutor)
    with make_executor("local", devices=[], workers=1) as pool:
        assert isinstance(pool, LocalPoolExecutor) and pool.slots == [None]
    with pytest.raises(ValueError, match="unknown executor kind 'slurm'; valid kinds: inprocess, local, ray"):
        make_executor("slurm")


def test_tasks_are_validated():
    with pytest.raises(ValueError, match="package.module:function"):
        Task("sandbox_tasks", {}, 1)
    with pytest.raises(ValueError, match="JSON data"):
        Task("sandbox_tasks:returns", {"f": print}, 1)
    with pytest.raises(ValueError, match="timeout_s"):
        Task("sandbox_tasks:returns", {}, 0)


def test_ray_executor_evaluates_a_batch_with_a_crash():
    pytest.importorskip("ray")
    ex = RayExecutor(num_cpus=2)
    try:
        assert ex.num_gpus == 0
        tasks = batch_with_a_crash() + [Task("sandbox_tasks:sleeps", {"seconds": 60}, 1.0),
                                        Task("sandbox_tasks:raises", {"message": "bad"}, 30)]
        outcomes = ex.map(tasks)
    finally:
        ex.close()
    assert [o.status for o in outcomes] == [Status.OK, Status.CRASHED, Status.OK, Status.OK, Status.TIMEOUT,
                                            Status.ERROR]
    assert [o.value["echo"]["i"] for o in outcomes if o.ok] == [0, 2, 3]
    assert outcomes[1].exit_code == -11 and outcomes[5].error == "ValueError: bad"


def test_tasks_that_time_themselves_run_side_by_side_only_on_separate_gpus():
    with LocalPoolExecutor(devices=[0, "cuda:1"], warm=False) as gpus, LocalPoolExecutor(workers=3) as cpus:
        assert gpus.timing_slots() == 2  # kforge tune runs a candidate per GPU at once
        assert cpus.timing_slots() == 1  # CPU slots share the cores a timing needs alone
    assert InProcessExecutor().timing_slots() == 1


def _lossy(marker: str, lose: int):
    """A Ray task body whose Ray worker dies (as on a lost node) on its first `lose` attempts, then
    runs the task as RayExecutor does; defined in a function so Ray ships it by value."""
    def body(task, cuda, env_allow, sys_path):
        import os

        from kforge.evaluate.executors import _ray_task

        with open(marker, "a") as f:
            f.write("x")
        if os.path.getsize(marker) <= lose:
            os._exit(1)
        return _ray_task(task, cuda, env_allow, sys_path)
    return body


def test_a_ray_worker_lost_mid_task_is_run_again_elsewhere_and_its_attempt_returns_nothing(tmp_path):
    ray = pytest.importorskip("ray")
    ex = RayExecutor(num_cpus=2, retries=2)
    try:
        once, always = str(tmp_path / "once"), str(tmp_path / "always")
        ex._remote = ray.remote(max_retries=ex.retries, num_cpus=1)(_lossy(once, 1))
        (outcome,) = ex.map([Task("sandbox_tasks:returns", {"i": 7}, 30)])
        ex._remote = ray.remote(max_retries=ex.retries, num_cpus=1)(_lossy(always, 99))
        (lost,) = ex.map([Task("sandbox_tasks:returns", {"i": 8}, 30)])
    finally:
        ex.close()
    assert outcome.ok and outcome.value["echo"]["i"] == 7  # one outcome: the lost attempt left none
    assert open(once).read() == "xx"  # lost once, run once more
    assert lost.status == Status.CRASHED and lost.error.startswith("ray: ")  # retries spent: a crash, no value
    assert lost.value is None and open(always).read() == "xxx"  # the first run and two retries
