"""The miss log tells the truth: calls made under `misses.uncounted()` (kforge's own timing loops)
are served and shown in stats but never logged; keys the table now serves drop out
(`misses.outstanding`); a fallback caused by the call's layout records that layout."""
from __future__ import annotations

import asyncio
import threading
import warnings

import pytest
import torch

import kforge
from helpers import make_record, write_user_table
from kforge.records import Domain
from kforge.router import dispatch, misses

RMS = kforge.ops.SPECS["rms_norm"]
SOFTMAX = kforge.ops.SPECS["softmax"]
F32 = torch.float32


def logged(op: str, problem) -> dict:
    hits = [e for e in misses.read_all() if e["op"] == op and tuple(e["shape"]) == tuple(problem)]
    assert len(hits) <= 1
    return hits[0] if hits else {"misses": 0, "fallbacks": 0}


def call_rms(shape=(4, 48), times: int = 1):
    args = RMS.make_inputs(shape, F32, "cpu", 0)
    for _ in range(times):
        out = kforge.ops.rms_norm(*args)
    torch.testing.assert_close(out, RMS.vendor(*args))


def test_misses_inside_uncounted_are_served_but_not_logged_and_the_same_calls_outside_are():
    with misses.uncounted():
        call_rms(times=6)
    kforge.flush()
    assert logged("rms_norm", (4, 48))["misses"] == 0
    assert kforge.stats()["ops"]["rms_norm"]["miss"] == 6  # stats count every call served

    call_rms(times=2)
    with misses.uncounted():
        call_rms(times=5)  # the same cached decision: only its quiet calls are held back
    call_rms(times=1)
    kforge.flush()
    assert logged("rms_norm", (4, 48))["misses"] == 3
    kforge.flush()
    assert logged("rms_norm", (4, 48))["misses"] == 3  # nothing counted twice


def test_uncounted_nests_and_ends_with_its_outermost_block():
    with misses.uncounted():
        with misses.uncounted():
            call_rms(times=2)
        assert misses.uncounted_active()  # the inner block's end leaves the outer one in force
        call_rms(times=2)
    assert not misses.uncounted_active()
    call_rms(times=1)
    kforge.flush()
    assert logged("rms_norm", (4, 48))["misses"] == 1


def test_uncounted_holds_for_its_own_thread_only():
    """Another thread's calls, made while this thread is inside uncounted(), are counted."""
    inside, done = threading.Event(), threading.Event()

    def other():
        inside.wait(10)
        call_rms(times=4)
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    with misses.uncounted():
        inside.set()
        assert done.wait(30)
        call_rms(times=3)
    thread.join(10)
    kforge.flush()
    assert logged("rms_norm", (4, 48))["misses"] == 4


def test_uncounted_holds_for_its_own_asyncio_task_only():
    async def quiet():
        with misses.uncounted():
            await asyncio.sleep(0)  # the other task runs here, while this one is inside the block
            call_rms(times=2)
            await asyncio.sleep(0)

    async def loud():
        await asyncio.sleep(0)
        call_rms(times=3)

    async def both():
        await asyncio.gather(quiet(), loud())

    asyncio.run(both())
    kforge.flush()
    assert logged("rms_norm", (4, 48))["misses"] == 3


def test_a_retired_decision_keeps_its_quiet_calls_out_of_the_log(kforge_home):
    """A table change drops decisions (their counts move to the router): quiet calls stay quiet."""
    call_rms(times=2)
    with misses.uncounted():
        call_rms(times=4)
    dispatch.ROUTER.ops["rms_norm"].reset()  # what a changed table file does
    kforge.flush()
    assert logged("rms_norm", (4, 48))["misses"] == 2


def test_a_call_time_failure_under_uncounted_is_not_logged_as_a_fallback(fake_triton):
    write_user_table(make_record(problem=(4, 48), impl="triton:test-raise", p50=0.01))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dispatch.KforgeFallbackWarning)
        with misses.uncounted():
            call_rms(times=3)  # the first raises and is served by vendor; then a fallback decision
    kforge.flush()
    assert logged("rms_norm", (4, 48)) == {"misses": 0, "fallbacks": 0}
    assert kforge.stats()["ops"]["rms_norm"]["fallback"] == 3


def test_a_graph_compiled_under_uncounted_notes_no_miss():
    key = kforge.records.DispatchKey("rms_norm", "cpu", "float32,float32", (4, 48))
    with misses.uncounted():
        dispatch.ROUTER.note_miss(key)
    dispatch.ROUTER.note_miss(key)
    assert dispatch.ROUTER.unflushed[key] == [1, 0]


# -- layout ----------------------------------------------------------------------------------------
def sliced(shape):
    base = torch.randn(*shape[:-1], shape[-1] + 16)
    return base[..., : shape[-1]]


def test_a_fallback_caused_by_the_calls_layout_records_that_layout(fake_triton):
    write_user_table(make_record(problem=(2, 32), impl="triton:test-ok", domain=Domain(contiguous=True)),
                     make_record(problem=(3, 32), impl="triton:test-ok", domain=Domain(dims={"rows": (1, 2)})))
    kforge.ops.rms_norm(sliced((2, 32)), torch.randn(32), 1e-6)  # contiguous calls are served here
    kforge.ops.rms_norm(*RMS.make_inputs((3, 32), F32, "cpu", 0))  # the domain's rows, not the layout
    kforge.flush()
    assert logged("rms_norm", (2, 32))["layouts"] == [{"contiguous": False, "aligned": 16}]
    assert logged("rms_norm", (2, 32))["fallbacks"] == 1
    assert "layouts" not in logged("rms_norm", (3, 32)) and logged("rms_norm", (3, 32))["fallbacks"] == 1


@pytest.mark.parametrize("bad", [[{"contiguous": "no", "aligned": 16}], [{"contiguous": False}], "x"])
def test_a_miss_log_with_a_malformed_layout_is_set_aside(bad, kforge_home):
    from kforge.files import atomic_write_json

    path = misses.log_path("cpu")
    atomic_write_json(path, {"kind": misses.KIND, "version": misses.VERSION, "device": "cpu", "entries": [
        {"op": "rms_norm", "dtypes": "float32,float32", "shape": [2, 32], "misses": 1, "fallbacks": 0,
         "layouts": bad}]})
    assert misses.read_all() == []
