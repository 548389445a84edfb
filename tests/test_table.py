"""The persisted score table: concurrent and crashing writers, corrupt and foreign files, layer
precedence, and re-reading a file that changed under a running process."""
from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
import warnings

import pytest
import torch

import kforge
from helpers import cpu_device, make_record, write_user_table
from kforge.records import SCHEMA_VERSION
from kforge.router import dispatch
from kforge.router.table import Layer, ScoreTable, TableWarning, parse_table
from kforge.testing import assert_matches_reference

RMS = kforge.ops.SPECS["rms_norm"]
FORK = multiprocessing.get_context("fork")  # the parent has kforge imported: no 2 s import per child


def user_shard(op: str = "rms_norm"):
    return ScoreTable().writable_layer().path(cpu_device(), op)


def table_warnings(caught) -> list:
    return [w for w in caught if issubclass(w.category, TableWarning)]


def call_rms(shape=(8, 64), seed=0, times: int = 3):
    """Call kforge.ops.rms_norm `times`, letting the router look for table changes before each;
    every output must match the reference. Returns the last output."""
    args = RMS.make_inputs(shape, torch.float32, "cpu", seed)
    for _ in range(times):
        dispatch.ROUTER.next_check = 0.0
        out = kforge.ops.rms_norm(*args)
        assert_matches_reference(RMS, args, out)
    return out


# -- concurrent and crashing writers -------------------------------------------------------------
WRITERS, PER_WRITER, BATCHES = 8, 40, 2  # 8 processes contend for one shard: 16 writes, 320 records


def _concurrent_writer(worker: int, start) -> None:
    start.wait(30)
    table = ScoreTable()
    per_batch = PER_WRITER // BATCHES
    for b in range(BATCHES):
        table.write([make_record(problem=(worker * 1000 + b * per_batch + i + 1, 64), attempt_id=f"w{worker}")
                     for i in range(per_batch)])


def test_concurrent_writers_lose_no_record():
    start = FORK.Event()
    procs = [FORK.Process(target=_concurrent_writer, args=(w, start)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    start.set()
    path = user_shard()
    seen = 0  # meanwhile, a reader only ever sees whole tables, each holding at least the last one
    while any(p.is_alive() for p in procs):
        if path.exists():
            records, skipped = parse_table(path.read_text(), str(path))
            assert skipped == 0 and len(records) >= seen
            seen = len(records)
        time.sleep(0.05)
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * WRITERS

    data = json.loads(path.read_text())  # valid JSON
    assert data["schema_version"] == SCHEMA_VERSION and len(data["records"]) == WRITERS * PER_WRITER
    with warnings.catch_warnings():
        warnings.simplefilter("error", TableWarning)
        records = ScoreTable().records(cpu_device(), "rms_norm")
    expected = {(w * 1000 + i + 1, 64) for w in range(WRITERS) for i in range(PER_WRITER)}
    assert {r.key.shape for r in records} == expected
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp") or ".corrupt" in p.name]


GENERATION_SIZE = 400  # records per write: big enough that a kill often lands inside one


def _looping_writer(ready, generation: int) -> None:
    # Hold each write open a little (a slow disk): the temp file then exists for a good share of
    # the loop, so random kills land inside writes often, whatever this machine's speed.
    real_fsync = os.fsync

    def slow_fsync(fd):
        time.sleep(0.02)
        real_fsync(fd)

    os.fsync = slow_fsync
    table = ScoreTable()
    while True:
        table.write([make_record(problem=(i + 1, 64), attempt_id=f"gen-{generation}") for i in range(GENERATION_SIZE)])
        ready.set()
        generation += 1


def _generation(path) -> int:
    records, skipped = parse_table(path.read_text(), str(path))
    assert skipped == 0 and len(records) == GENERATION_SIZE
    generations = {r.attempt_id for r in records}
    assert len(generations) == 1, f"a mix of generations: {sorted(generations)[:5]}"
    return int(generations.pop().removeprefix("gen-"))


def test_writer_killed_mid_write_leaves_old_or_new_table():
    rng = random.Random(1234)
    path = user_shard()
    last, kills, torn_writes = -1, 0, 0
    while kills < 5 or (torn_writes == 0 and kills < 40):  # ~1 kill in 4 lands inside a write
        ready = FORK.Event()
        writer = FORK.Process(target=_looping_writer, args=(ready, last + 1))
        writer.start()
        assert ready.wait(30)
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(writer.pid, signal.SIGKILL)
        writer.join(10)
        assert writer.exitcode == -signal.SIGKILL
        kills += 1
        # A stray temp file is what a kill inside atomic_write_json leaves behind.
        strays = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
        torn_writes += bool(strays)
        for p in strays:
            p.unlink()
        generation = _generation(path)  # the whole of one generation, never a partial file
        assert generation > last  # the writer's first write, or a later one
        last = generation
    assert torn_writes, f"none of {kills} kills landed inside a write; the test did not test anything"

    # The killed writers' lock died with them, and readers see a clean table.
    with warnings.catch_warnings():
        warnings.simplefilter("error", TableWarning)
        ScoreTable().write([make_record(problem=(10_000, 64), attempt_id="after")])
        records = ScoreTable().records(cpu_device(), "rms_norm")
    assert len(records) == GENERATION_SIZE + 1


# -- corrupt and foreign files -------------------------------------------------------------------
CORRUPTIONS = {
    "truncated": lambda good: good[: len(good) // 2],
    "garbage": lambda good: bytes(random.Random(7).randrange(256) for _ in range(500)),
    "empty": lambda good: b"",
    "not-a-table": lambda good: b'[{"schema_version": 1}]',
    "records-not-a-list": lambda good: json.dumps({"schema_version": SCHEMA_VERSION, "records": {}}).encode(),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_user_table_warns_once_serves_vendor_and_is_moved_aside(fake_triton, corruption):
    write_user_table(make_record(problem=(8, 64), impl="triton:test-wrong", p50=0.01))
    path = user_shard()
    bad = CORRUPTIONS[corruption](path.read_bytes())
    path.write_bytes(bad)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call_rms(times=5)
    found = table_warnings(caught)
    assert len(found) == 1, [str(w.message) for w in found]
    assert "corrupt" in str(found[0].message)
    assert fake_triton.calls["triton:test-wrong"] == 0
    assert kforge.stats()["ops"]["rms_norm"]["miss"] == 5

    assert not path.exists()
    aside = [p for p in path.parent.iterdir() if p.name.startswith("rms_norm.json.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == bad  # set aside, not deleted

    # The next write starts a clean shard, and routing picks it up.
    write_user_table(make_record(problem=(8, 64), impl="triton:test-ok", p50=0.01))
    call_rms(times=2)
    assert fake_triton.calls["triton:test-ok"] == 2


def test_writing_over_a_corrupt_shard_sets_it_aside_first():
    path = user_shard()
    path.parent.mkdir(parents=True)
    path.write_text('{"schema_version": 1, "kind": "kforge-score-table", "records": [{"op": "rms_')
    with pytest.warns(TableWarning, match="moved it to"):
        ScoreTable().write([make_record(impl="triton:test-ok")])
    assert [r.impl for r in ScoreTable().records(cpu_device(), "rms_norm")] == ["triton:test-ok"]
    (aside,) = [p for p in path.parent.iterdir() if p.name.startswith("rms_norm.json.corrupt-")]
    assert aside.read_text().endswith('"op": "rms_')


def test_corrupt_extra_table_warns_once_and_is_left_alone(monkeypatch, tmp_path):
    extra = tmp_path / "extra.json"
    extra.write_bytes(b'{"schema_version": 1, "records": [')
    monkeypatch.setenv("KFORGE_TABLE", str(extra))
    dispatch.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call_rms(times=4)
    assert len(table_warnings(caught)) == 1
    assert extra.read_bytes() == b'{"schema_version": 1, "records": ['  # a read-only layer: never moved
    assert kforge.stats()["ops"]["rms_norm"]["miss"] == 4


def test_invalid_records_are_skipped_with_one_warning_and_valid_ones_kept(fake_triton):
    write_user_table(make_record(problem=(8, 64), impl="triton:test-ok", p50=0.01))
    path = user_shard()
    data = json.loads(path.read_text())
    broken = dict(data["records"][0], impl="triton:test-wrong")
    broken["time_us"] = {"p20": 3.0, "p50": 2.0, "p80": 1.0}  # p20 > p50: invalid
    data["records"].append(broken)
    path.write_text(json.dumps(data))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call_rms(times=3)
    assert len(table_warnings(caught)) == 1
    assert fake_triton.calls == {"triton:test-ok": 3}
    assert path.exists()


@pytest.mark.parametrize("layer", ["user", "extra"])
def test_future_schema_version_is_not_trusted_and_not_destroyed(fake_triton, monkeypatch, tmp_path, layer):
    record = make_record(problem=(8, 64), impl="triton:test-wrong", p50=0.01)
    payload = {"schema_version": SCHEMA_VERSION + 1, "kind": "kforge-score-table", "records": [record.to_json()],
               "a_field_from_the_future": {"x": 1}}
    if layer == "user":
        path = user_shard()
        path.parent.mkdir(parents=True)
    else:
        path = tmp_path / "extra.json"
        monkeypatch.setenv("KFORGE_TABLE", str(path))
        dispatch.reset()
    text = json.dumps(payload)
    path.write_text(text)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call_rms(times=4)
        assert ScoreTable().records(cpu_device(), "rms_norm") == []
    assert fake_triton.calls["triton:test-wrong"] == 0
    assert len(table_warnings(caught)) == 2  # the router's table and the fresh ScoreTable: one each
    assert path.read_text() == text  # reading never destroys it

    if layer == "user":
        # Writing the shard sets the foreign file aside (kept, byte for byte) and starts afresh.
        with pytest.warns(TableWarning, match="schema_version"):
            ScoreTable().write([make_record(problem=(8, 64), impl="triton:test-ok")])
        aside = [p for p in path.parent.iterdir() if p.name.startswith("rms_norm.json.foreign-")]
        assert len(aside) == 1 and aside[0].read_text() == text
        assert [r.impl for r in ScoreTable().records(cpu_device(), "rms_norm")] == ["triton:test-ok"]


# -- layers --------------------------------------------------------------------------------------
def _layers(tmp_path):
    return (Layer("bundled", tmp_path / "bundled", single_file=False, writable=False),
            Layer("user", tmp_path / "user", single_file=False, writable=True),
            Layer("extra", tmp_path / "extra.json", single_file=True, writable=False))


def test_later_layers_win_for_the_same_key_and_implementation(tmp_path):
    bundled, user, extra = _layers(tmp_path)
    writer = ScoreTable(layers=[bundled, user, extra])
    key_rows = {"bundled": (8, 64), "user": (16, 64), "extra": (32, 64)}
    for layer, p50 in ((bundled, 1.0), (user, 2.0), (extra, 3.0)):
        # every layer has the shared record; each also has one of its own
        writer.write([make_record(problem=(4, 64), p50=p50, attempt_id=layer.name),
                      make_record(problem=key_rows[layer.name], attempt_id=layer.name)], layer=layer)

    def shared(layers):
        records = ScoreTable(layers=layers).records(cpu_device(), "rms_norm")
        own = {r.key.shape: r.attempt_id for r in records if r.key.shape != (4, 64)}
        assert own == {key_rows[layer.name]: layer.name for layer in layers}  # nothing else lost
        (rec,) = [r for r in records if r.key.shape == (4, 64)]
        return rec.attempt_id

    assert shared([bundled]) == "bundled"
    assert shared([bundled, user]) == "user"
    assert shared([bundled, user, extra]) == "extra"
    assert shared([bundled, extra]) == "extra"


def test_default_layers_route_bundled_then_user_then_kforge_table(fake_triton, monkeypatch, tmp_path):
    bundled, user, extra = _layers(tmp_path)
    writer = ScoreTable(layers=[bundled, user, extra])
    writer.write([make_record(impl="triton:test-ok-a", p50=5.0), make_record(impl="triton:test-ok-b", p50=10.0)],
                 layer=bundled)
    writer.write([make_record(impl="triton:test-ok-b", p50=1.0)], layer=user)  # b now fastest
    writer.write([make_record(impl="triton:test-ok-a", p50=0.5)], layer=extra)  # a fastest again

    monkeypatch.setenv("KFORGE_BUNDLED_TABLE", str(bundled.root))
    dispatch.reset()
    call_rms(times=1)
    assert fake_triton.calls == {"triton:test-ok-a": 1}  # bundled only (the user dir is elsewhere)

    monkeypatch.setenv("KFORGE_HOME", str(tmp_path))  # user table at tmp_path/table
    (tmp_path / "user").rename(tmp_path / "table")
    dispatch.reset()
    call_rms(times=1)
    assert fake_triton.calls == {"triton:test-ok-a": 1, "triton:test-ok-b": 1}

    monkeypatch.setenv("KFORGE_TABLE", str(extra.root))
    dispatch.reset()
    call_rms(times=1)
    assert fake_triton.calls == {"triton:test-ok-a": 2, "triton:test-ok-b": 1}
    assert [layer.name for layer in dispatch.ROUTER.table.layers] == ["bundled", "user", "extra"]


def test_reset_with_a_table_routes_from_it(fake_triton, tmp_path):
    _, user, _ = _layers(tmp_path)
    table = ScoreTable(layers=[user])
    table.write([make_record(impl="triton:test-ok")])
    dispatch.reset(table=table)
    call_rms(times=2)
    assert fake_triton.calls == {"triton:test-ok": 2}


# -- re-reading --------------------------------------------------------------------------------
def test_a_running_process_rereads_a_changed_table(fake_triton, monkeypatch):
    monkeypatch.setattr(dispatch, "CHECK_INTERVAL_S", 0.0)
    call_rms(times=1)
    assert kforge.stats()["ops"]["rms_norm"]["miss"] == 1

    ScoreTable().write([make_record(impl="triton:test-ok-a", p50=2.0)])  # as another process would
    call_rms(times=1)
    assert fake_triton.calls == {"triton:test-ok-a": 1}

    ScoreTable().write([make_record(impl="triton:test-ok-b", p50=1.0)])
    call_rms(times=2)
    assert fake_triton.calls == {"triton:test-ok-a": 1, "triton:test-ok-b": 2}

    user_shard().unlink()
    call_rms(times=1)
    assert fake_triton.calls == {"triton:test-ok-a": 1, "triton:test-ok-b": 2}
    assert kforge.stats()["ops"]["rms_norm"]["miss"] == 2


def test_an_unchanged_table_is_not_reread(fake_triton, monkeypatch):
    write_user_table(make_record(impl="triton:test-ok"))
    call_rms(times=1)
    reads = []
    original = ScoreTable.records

    def counting(self, device, op):
        reads.append(op)
        return original(self, device, op)

    monkeypatch.setattr(ScoreTable, "records", counting)
    call_rms(times=5, seed=0)  # same signature, periodic checks find nothing changed
    assert reads == []
    assert fake_triton.calls == {"triton:test-ok": 6}


def test_the_shipped_tables_parse_and_their_records_are_verified_measurements():
    """Every shard in kforge/tables/ is a valid table of this schema for one device and op, and
    each record carries the evidence and GPU timing the router relies on."""
    from kforge.ops import SPECS
    from kforge.router.key import exact_indices, reaches
    from kforge.router.table import parse_table
    from kforge.store import BundledKernels

    shards = sorted(kforge.paths.BUNDLED_TABLE_DIR.glob("*/*.json"))
    assert shards, "no bundled table"
    for shard in shards:
        data = json.loads(shard.read_text())
        records, skipped = parse_table(shard.read_text(), str(shard))
        assert skipped == 0 and records, shard
        assert data["op"] == shard.stem and data["op"] in SPECS
        assert {r.key.device for r in records} == {data["device"]} and {r.key.op for r in records} == {data["op"]}
        for r in records:
            assert r.timing in ("cuda_events", "cuda_graph") and r.p50_us > 0, (shard, r.impl)
            assert r.evidence.max_error_ratio <= 1 and r.key.dtypes in r.evidence.dtypes
            # verified at least as far as its own key: the router serves a record no further
            assert reaches(r.key.shape, r.evidence.shapes, exact_indices(SPECS[r.key.op])), (shard, r.impl, r.key)
            if r.impl.startswith("triton:"):  # the kernel the record names ships with the table, intact
                kernel = BundledKernels(kforge.paths.BUNDLED_TABLE_DIR / "kernels").get(r.source_sha256)
                assert r.impl == kernel.impl_id and kernel.op == data["op"]


def test_shared_evidence_is_written_once_and_read_back_as_it_was():
    from kforge.records import Evidence
    from kforge.router.table import shard_payload

    shared = Evidence(dtypes=("float32,float32",), shapes=tuple((r, 64) for r in range(1, 300)), seeds=(0, 1),
                      max_error_ratio=0.25)
    records = [make_record(problem=(r, 64), impl="triton:abc", evidence=shared) for r in (1, 2, 3)]
    records += [make_record(problem=(r, 64), impl="vendor") for r in (1, 2)]  # evidence of their own
    payload = shard_payload(None, "rms_norm", records)
    assert payload["schema_version"] == 2  # a kforge that reads only 1 sets the file aside, never rewrites it
    assert len(payload["evidence_pool"]) == 3 and {row["evidence"] for row in payload["records"]} == {0, 1, 2}
    back, skipped = parse_table(json.dumps(payload), "pooled")
    assert skipped == 0
    assert sorted(back, key=lambda r: (r.impl, r.key.shape)) == sorted(records, key=lambda r: (r.impl, r.key.shape))
    inline = {**payload, "records": [dict(row, evidence=payload["evidence_pool"][row["evidence"]])
                                     for row in payload["records"]]}
    del inline["evidence_pool"]  # the form tables were written in before (version 1): still read
    inline["schema_version"] = 1
    assert sorted(parse_table(json.dumps(inline), "inline")[0], key=lambda r: (r.impl, r.key.shape)) == \
        sorted(back, key=lambda r: (r.impl, r.key.shape))


@pytest.mark.parametrize("ref", [3, -1, True, 2**70])
def test_a_record_naming_a_missing_pool_entry_is_skipped_not_served(ref):
    from kforge.router.table import shard_payload

    payload = shard_payload(None, "rms_norm", [make_record(problem=(4, 64)), make_record(problem=(5, 64))])
    payload["records"][0]["evidence"] = ref
    with pytest.raises(Exception, match="invalid record"):
        parse_table(json.dumps(payload), "hostile", strict=True)
    kept, skipped = parse_table(json.dumps(payload), "hostile")
    assert skipped == 1 and [r.key.shape for r in kept] == [(5, 64)]


def test_an_evidence_pool_that_is_not_a_list_is_not_a_table():
    from kforge.errors import TableError

    with pytest.raises(TableError, match="evidence_pool must be a list"):
        parse_table(json.dumps({"schema_version": SCHEMA_VERSION, "kind": "kforge-score-table",
                                "evidence_pool": {"0": {}}, "records": []}), "hostile")


def test_a_pool_entry_is_checked_as_strictly_as_inline_evidence():
    """An entry equal in value to a valid one but with a float for a dim is refused, and so are the
    records naming it; the valid entry's record is kept (each entry checked once per file)."""
    from kforge.router.table import shard_payload

    payload = shard_payload(None, "rms_norm", [make_record(problem=(4, 64)), make_record(problem=(5, 64))])
    good = payload["evidence_pool"][payload["records"][0]["evidence"]]
    payload["evidence_pool"].append(dict(good, shapes=[[4.0, 64]]))
    payload["records"][1]["evidence"] = len(payload["evidence_pool"]) - 1
    kept, skipped = parse_table(json.dumps(payload), "hostile")
    assert skipped == 1 and [r.key.shape for r in kept] == [(4, 64)]
