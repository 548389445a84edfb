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


# -- outstanding: keys the table now serves drop out -------------------------------------------
def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    from kforge.cli.main import main

    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def misses_json(capsys, *flags: str) -> dict:
    import json

    rc, out, _ = run_main(capsys, "misses", "--json", *flags)
    assert rc == 0
    return json.loads(out)


def test_a_key_the_table_now_serves_drops_out_of_misses_and_of_tune_from_misses(capsys):
    from kforge.gen.tune import TuneKey, keys_from_misses

    call_rms((4, 48), times=3)
    call_rms((2, 40), times=2)
    kforge.flush()
    assert [e["shape"] for e in misses_json(capsys)["entries"]] == [[4, 48], [2, 40]]
    assert keys_from_misses("cpu") == [TuneKey("rms_norm", F32, (4, 48)), TuneKey("rms_norm", F32, (2, 40))]

    write_user_table(make_record(problem=(4, 48), impl="vendor"))  # what `kforge tune` writes there
    data = misses_json(capsys)
    assert [e["shape"] for e in data["entries"]] == [[2, 40]] and data["now_served"] == 1
    every = misses_json(capsys, "--all")["entries"]
    assert [(e["shape"], e["misses"], e["now_served"]) for e in every] == [([4, 48], 3, True), ([2, 40], 2, False)]
    assert keys_from_misses("cpu") == [TuneKey("rms_norm", F32, (2, 40))]
    rc, text, _ = run_main(capsys, "misses")
    assert rc == 0 and "2x40" in text and "4x48" not in text


def test_a_record_that_routes_there_from_a_near_shape_serves_the_key_and_one_that_does_not_reach_it_not():
    from kforge.gen.from_misses import spec_of

    call_rms((4, 48))
    call_rms((16, 48))
    kforge.flush()
    # Verified up to 8 rows at 48: it serves 4 rows (the nearest measured shape), never 16.
    write_user_table(make_record(problem=(8, 48), impl="vendor"))
    left = misses.outstanding(misses.read_all(), spec_of)
    assert [e["shape"] for e in left] == [[16, 48]] and "now_served" not in left[0]
    assert misses.outstanding(misses.read_all(), lambda op: None) == misses.read_all()  # no spec: outstanding


def test_a_layout_fallback_stays_outstanding_while_records_serve_only_contiguous_calls(fake_triton):
    from kforge.gen.from_misses import spec_of

    write_user_table(make_record(problem=(2, 32), impl="triton:test-ok", domain=Domain(contiguous=True)))
    kforge.ops.rms_norm(sliced((2, 32)), torch.randn(32), 1e-6)
    kforge.flush()
    assert [e["shape"] for e in misses.outstanding(misses.read_all(), spec_of)] == [[2, 32]]
    write_user_table(make_record(problem=(2, 32), impl="vendor"))  # vendor serves any layout
    assert misses.outstanding(misses.read_all(), spec_of) == []


def test_generate_from_misses_targets_only_outstanding_keys():
    from kforge.gen import from_misses

    call_rms((4, 48), times=2)
    call_rms((2, 40))
    kforge.flush()
    write_user_table(make_record(problem=(2, 40), impl="vendor"))
    assert [(t.op, t.shape) for t in from_misses.targets("cpu")] == [("rms_norm", (4, 48))]


def test_misses_to_issue_names_the_device_and_leaves_served_keys_out(capsys):
    import json

    from kforge.device import slug
    from kforge.records import DispatchKey

    h100 = "cuda|NVIDIA H100 80GB HBM3|sm90|torch2.13|triton3.5"
    misses.merge({DispatchKey("softmax", h100, "bfloat16", (4, 128)): (9, 0),
                  DispatchKey("softmax", h100, "bfloat16", (8, 256)): (3, 0)})
    write_user_table(make_record("softmax", (8, 256), impl="vendor", dtype=torch.bfloat16, device=h100))
    rc, out, _ = run_main(capsys, "misses", "--to-issue", "--json")
    result = json.loads(out)
    assert rc == 0 and result["request"]["shapes"] == [[4, 128]]
    assert f"`cuda: NVIDIA H100 80GB HBM3` (sm90, torch 2.13, triton 3.5), log `{slug(h100)}.json`" in result["body"]


# -- kforge's own loops ---------------------------------------------------------------------------
def test_calibrating_a_routed_entry_point_logs_no_miss():
    """calibrate verifies and times what it is given; a routed entry point's calls there are
    kforge's own. The same entry called once by a user afterwards is logged."""
    from kforge.backends import BackendName, Capabilities, Implementation
    from kforge.evaluate.calibrate import calibrate

    routed = Implementation("routed", BackendName.VENDOR, kforge.ops.softmax, Domain(), Capabilities())
    (rec,) = calibrate(SOFTMAX, (3, 40), F32, "cpu", backends=[routed], seeds=(0,))
    assert rec.impl == "routed" and kforge.stats()["ops"]["softmax"]["miss"] > 10  # verified and timed
    kforge.flush()
    assert logged("softmax", (3, 40))["misses"] == 0
    kforge.ops.softmax(*SOFTMAX.make_inputs((3, 40), F32, "cpu", 0))
    kforge.flush()
    assert logged("softmax", (3, 40))["misses"] == 1


def test_explain_logs_no_miss_for_the_routed_calls_it_runs():
    model = torch.nn.Softmax(dim=-1)
    x = torch.randn(3, 40)
    kforge.explain(model, x, options={"on_miss": "kforge"})
    kforge.flush()
    assert logged("softmax", (3, 40))["misses"] == 0
