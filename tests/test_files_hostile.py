"""Hostile files (issue 14, class 6): what `kforge table --import` and every JSON reader of kforge
do with a file written to break them. Imports are all or nothing, with an error naming the record
and the field; a path is never built from a name that is not an op name; a table file nested
200,000 levels deep, larger than the cap or of the wrong types is a corrupt file (set aside,
warned, the other layers still served), and so is each other JSON file kforge reads from disk."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest

from helpers import cpu_device, make_record, write_user_table
from kforge import files
from kforge.errors import TableError
from kforge.records import Record, RecordError
from kforge.router.table import Layer, ScoreTable, TableWarning, parse_table

CORPUS = Path(__file__).resolve().parent / "adversarial"
NESTED = "[" * 200_000 + "]" * 200_000  # RecursionError inside json before the fix


def run_main(capsys, *argv):
    from kforge.cli.main import main

    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def every_file(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")} if root.exists() else set()


# -- kforge table --import -------------------------------------------------------------------------
HOSTILE_IMPORTS = {  # file -> (record index, the field the error names)
    "file_table_absolute_op": (0, "op"),
    "file_table_dotdot_op": (1, "op"),  # record 0 is valid: all or nothing, it is not written either
    "file_table_long_op": (0, "op"),
    "file_table_nul_op": (0, "op"),
    "file_table_unknown_device": (0, "device"),
    "file_table_wrong_types": (0, "time_us"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_IMPORTS))
def test_a_hostile_import_is_refused_whole_naming_the_record_and_field(name, kforge_home, tmp_path, capsys):
    index, field = HOSTILE_IMPORTS[name]
    before = every_file(Path("/tmp/kforge_hostile_table")) | every_file(tmp_path.parent)
    rc, out, err = run_main(capsys, "table", "--import", str(CORPUS / f"{name}.json"))
    assert rc == 1 and out == ""
    assert f"record {index}" in err and f": {field}:" in err, err
    assert not (kforge_home / "table").exists()  # nothing written, not even the valid record
    assert every_file(Path("/tmp/kforge_hostile_table")) | every_file(tmp_path.parent) == before
    assert not Path("/tmp/kforge_hostile_table_escape.json").exists()


def test_an_import_error_lists_every_invalid_record(tmp_path, kforge_home, capsys):
    good = make_record().to_json()
    bad = [dict(good, op=f"../x{i}") for i in range(12)]
    path = tmp_path / "many.json"
    path.write_text(json.dumps({"schema_version": 1, "records": [good] + bad}))
    rc, _, err = run_main(capsys, "table", "--import", str(path))
    assert rc == 1 and "12 invalid record(s)" in err and "record 1 (op '../x0'): op:" in err
    assert "and 2 more" in err and not (kforge_home / "table").exists()


def test_a_valid_import_still_merges(tmp_path, kforge_home, capsys):
    path = tmp_path / "good.json"
    path.write_text(json.dumps({"schema_version": 1, "records": [make_record().to_json()]}))
    rc, out, _ = run_main(capsys, "table", "--import", str(path))
    assert rc == 0 and "imported 1 record(s) into 1 shard(s)" in out
    assert [r.impl for r in ScoreTable().records(cpu_device(), "rms_norm")] == ["triton:test-ok"]


# -- paths built from names -----------------------------------------------------------------------
BAD_NAMES = ["/etc/passwd", "../escape", "a/b", "x" * 300, "rms\x00norm", "rms_norm\n", "", ".hidden", "Upper"]


@pytest.mark.parametrize("op", BAD_NAMES)
def test_no_path_is_built_from_a_name_that_is_not_an_op_name(op, tmp_path):
    from kforge.gen.archive import Archive
    from kforge.userops import build, load

    with pytest.raises(RecordError, match="op"):
        Layer("user", tmp_path, single_file=False, writable=True).path(cpu_device(), op)
    with pytest.raises(ValueError):
        Archive(tmp_path).path(type("A", (), {"op": op, "id": Archive.new_id()})())
    with pytest.raises(build.UserOpError, match="op name"):
        load.load(op)
    assert every_file(tmp_path) == set()


def test_a_write_with_one_bad_op_writes_no_shard(tmp_path):
    good = make_record()
    evil = Record(**{**good.__dict__, "key": good.key.__class__("../../evil", cpu_device(), "float32", (8,))})
    with pytest.raises(RecordError):
        ScoreTable().write([good, evil])
    assert ScoreTable().records(cpu_device(), "rms_norm") == []


# -- table files: nested, oversized, wrong types ----------------------------------------------------
def test_parse_table_calls_deep_oversized_and_mistyped_files_corrupt(monkeypatch):
    with pytest.raises(TableError, match="nested too deeply"):
        parse_table(NESTED, "nested.json")
    with pytest.raises(TableError, match="nested too deeply"):
        parse_table('{"schema_version": 1, "records": [' + NESTED + "]}", "nested-record.json")
    monkeypatch.setattr(files, "MAX_JSON_BYTES", 1000)
    with pytest.raises(TableError, match="larger than 1000 bytes"):
        parse_table(json.dumps({"schema_version": 1, "records": [], "pad": " " * 1000}), "big.json")
    for data in ([], "text", {"records": 7, "schema_version": 1}, {"kind": ["x"], "records": []}):
        with pytest.raises(TableError):
            parse_table(json.dumps(data), "types.json")


WRONG = [None, True, -1, 2**70, 1.5, float("inf"), "x" * 300, "a\x00b", [], [[1]], {}, {"p20": "1"}]


def test_a_record_with_any_field_of_any_wrong_type_is_skipped_never_raised():
    good = make_record().to_json()
    raws = [dict(good, **{key: value}) for key in good for value in WRONG]
    raws += [dict(good, evidence=dict(good["evidence"], **{k: v})) for k in good["evidence"] for v in WRONG]
    raws += [dict(good, domain=dict(good["domain"], **{k: v})) for k in good["domain"] for v in WRONG]
    text = json.dumps({"schema_version": 1, "records": raws}, allow_nan=True)
    records, skipped = parse_table(text, "fuzz.json")  # raises nothing but TableError, skips the rest
    assert skipped + len(records) == len(raws) and skipped > len(raws) // 2
    for record in records:  # what was kept is well-typed
        assert isinstance(record.key.op, str) and all(isinstance(d, int) for d in record.key.shape)
    with pytest.raises(TableError, match=r"\d+ invalid record\(s\): record 0: op: must be a string"):
        parse_table(text, "fuzz.json", strict=True)


@pytest.mark.parametrize("content", ["nested", "oversized", "wrong-types"])
def test_a_hostile_user_shard_is_set_aside_and_the_other_layers_still_serve(content, tmp_path, monkeypatch):
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"schema_version": 1, "records": [make_record(impl="triton:test-extra").to_json()]}))
    monkeypatch.setenv("KFORGE_TABLE", str(extra))
    write_user_table(make_record())
    shard = ScoreTable().writable_layer().path(cpu_device(), "rms_norm")
    write_hostile(shard, content)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        impls = [r.impl for r in ScoreTable().records(cpu_device(), "rms_norm")]
    assert impls == ["triton:test-extra"]
    (warning,) = [w for w in caught if issubclass(w.category, TableWarning)]
    assert "corrupt" in str(warning.message) and "moved it to" in str(warning.message)
    assert not shard.exists() and any(p.name.startswith("rms_norm.json.corrupt-") for p in shard.parent.iterdir())


@pytest.mark.parametrize("content", ["nested", "oversized", "wrong-types"])
def test_a_hostile_kforge_table_hides_no_other_layer(content, tmp_path, monkeypatch):
    extra = tmp_path / "extra.json"
    write_hostile(extra, content)
    monkeypatch.setenv("KFORGE_TABLE", str(extra))
    write_user_table(make_record())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        impls = [r.impl for r in ScoreTable().records(cpu_device(), "rms_norm")]
    assert impls == ["triton:test-ok"]  # the user layer still serves
    assert len([w for w in caught if issubclass(w.category, TableWarning)]) == 1
    assert extra.exists()  # a read-only layer: warned about, never moved


def write_hostile(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if content == "nested":
        path.write_text(NESTED)
    elif content == "oversized":  # valid JSON up front, then zeros past the cap (a sparse file: no disk used)
        path.write_text('{"schema_version": 1, "records": []}')
        with open(path, "r+b") as f:
            f.truncate(files.MAX_JSON_BYTES + 1)
    else:
        path.write_text(json.dumps({"schema_version": 1, "kind": "kforge-score-table", "records": {"op": "rms_norm"}}))


# -- the other JSON files kforge reads ---------------------------------------------------------------
def test_a_nested_or_mistyped_miss_log_is_set_aside_and_counting_goes_on(kforge_home):
    from kforge.records import DispatchKey
    from kforge.router import misses

    key = DispatchKey("rms_norm", cpu_device(), "float32,float32", (8, 64))
    path = misses.log_path(cpu_device())
    for hostile in (NESTED, json.dumps({"kind": misses.KIND, "version": 1, "entries": [
            {"op": "rms_norm", "dtypes": "float32,float32", "shape": [8, 64], "misses": "1", "fallbacks": 0}]})):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(hostile)
        assert misses.read_all() == []  # listing skips it
        with pytest.warns(UserWarning, match="miss log"):
            misses.merge({key: (2, 0)})
        (entry,) = misses.read_all()
        assert entry["misses"] == 2
        path.unlink()


def test_nested_or_mistyped_attempts_are_skipped_with_a_warning(tmp_path):
    from kforge.gen.archive import Archive, ArchiveWarning

    archive = Archive(tmp_path)
    folder = tmp_path / "rms_norm"
    folder.mkdir()
    (folder / f"{Archive.new_id()}.json").write_text(NESTED)
    (folder / f"{Archive.new_id()}.json").write_text(json.dumps({"id": 1, "op": ["rms_norm"]}))
    with pytest.warns(ArchiveWarning):
        assert archive.list() == [] and archive.query(device="cpu") == []


def test_a_nested_or_mistyped_user_op_manifest_is_a_clear_error(kforge_home):
    from kforge.userops import build, load

    for i, text in enumerate((NESTED, json.dumps({"kind": "function", "schema": 3, "shapes": "x"}),
                              json.dumps({"kind": "function", "trusted": True, "schema": "(Tensor x) -> Tensor",
                                          "shapes": [["a"]], "dtypes": ["int4"], "problem_dims": [],
                                          "exact_dims": []}))):
        folder = kforge_home / "ops" / f"hostile_{i}"
        folder.mkdir(parents=True)
        (folder / "definition.json").write_text(text)
        (folder / "source.py").write_text("raise SystemExit('must not run')\n")
        with pytest.raises(build.UserOpError, match=f"hostile_{i}"):
            load.load(f"hostile_{i}")


def test_nested_or_mistyped_kernel_metadata_is_an_integrity_error(kforge_home):
    from kforge.store import KernelIntegrityError, KernelStore

    store = KernelStore()
    kernel = store.put("# a kernel\n", op="rms_norm", provider="test")
    for text in (NESTED, json.dumps({"sha256": kernel.sha256, "op": "../x", "provider": "p"}),
                 json.dumps({"sha256": kernel.sha256, "op": "rms_norm", "provider": "p", "versions": [1]})):
        os.chmod(store.meta_path(kernel.sha256), 0o644)
        store.meta_path(kernel.sha256).write_text(text)
        with pytest.raises(KernelIntegrityError, match="metadata is unreadable"):
            store.get(kernel.sha256)
        assert store.list() == []
