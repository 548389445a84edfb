"""The attempts archive (`kforge.gen.archive`) and `kforge attempts`: every field round-trips, ids are
unique and time-sorted across processes, prefixes resolve, filters select exactly, an unreadable
file is skipped with a warning."""
from __future__ import annotations

import json
import multiprocessing

import pytest

from kforge.cli.main import main
from kforge.gen.archive import Archive, ArchiveWarning, Attempt, AttemptNotFound

H100 = "cuda|NVIDIA H100 80GB HBM3|9.0|torch 2.11|triton 3.6"
CPU = "cpu|Intel(R) Xeon(R) Processor|-|torch 2.13|triton 3.9"


def attempt(archive: Archive, op="rms_norm", device=H100, verdict="accepted", run_id="run-a", provider="catalog",
            **extra) -> Attempt:
    a = Attempt(id=archive.new_id(), run_id=run_id, op=op, device=device, round=1, variant=2, parent="p-1",
                parent_sha256="ab" * 32, provider=provider, model="catalog",
                messages=[{"role": "user", "content": "write rms_norm " * 500}], response="```python\nx = 1\n```",
                source="x = 1\n", sha256="cd" * 32, verdict=verdict, reason="" if verdict == "accepted" else "too slow",
                check=None if verdict == "accepted" else "error-budget", case=None,
                measurements=[{"shape": [32, 4096], "dtype": "bfloat16", "speedup_vs_vendor": 1.5,
                               "candidate": {"p50_us": 2.0}, "vendor": {"p50_us": 3.0}}],
                best_speedup=1.5 if verdict == "accepted" else None,
                usage={"input_tokens": 10, "output_tokens": 5, "cost_usd": None}, latency_s=0.5,
                created="2026-11-22T10:00:00+00:00")
    for name, value in extra.items():
        setattr(a, name, value)
    archive.add(a)
    return a


def test_an_attempt_round_trips_every_field():
    archive = Archive()
    a = attempt(archive)
    assert archive.get(a.id) == a
    assert archive.list() == [a]


def test_prefixes_resolve_and_say_when_they_do_not():
    archive = Archive()
    a, b = attempt(archive), attempt(archive)
    assert archive.get(a.id[:-2]) == a if a.id[:-2] != b.id[:-2] else True
    with pytest.raises(AttemptNotFound, match="2 attempts start with"):
        archive.get(a.id[:8])
    with pytest.raises(AttemptNotFound, match="no attempt id starts with 'nope'"):
        archive.get("nope")


def test_query_filters_select_exactly():
    archive = Archive()
    a = attempt(archive)
    b = attempt(archive, op="softmax", device=CPU, verdict="rejected", run_id="run-b", provider="openai")
    c = attempt(archive, verdict="rejected")
    assert archive.query(op="softmax") == [b]
    assert archive.query(device="H100") == [a, c]
    assert archive.query(accepted=True) == [a]
    assert archive.query(accepted=False, op="rms_norm") == [c]
    assert archive.query(run_id="run-b") == [b] and archive.query(provider="openai") == [b]


def test_an_unreadable_file_is_skipped_with_a_warning(kforge_home):
    archive = Archive()
    a = attempt(archive)
    (archive.root / "rms_norm" / "20990101T000000000-bad.json").write_text("{not json")
    with pytest.warns(ArchiveWarning, match="bad.json"):
        assert archive.list() == [a]


def _write_many(args):
    home, n = args
    import os

    os.environ["KFORGE_HOME"] = home
    archive = Archive()
    return [attempt(archive).id for _ in range(n)]


def test_two_processes_writing_at_once_lose_nothing(kforge_home):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        ids = sum(pool.map(_write_many, [(str(kforge_home), 50)] * 2), [])
    assert len(set(ids)) == 100
    assert [a.id for a in Archive().list()] == sorted(ids)


def test_the_cli_lists_shows_and_queries(capsys):
    archive = Archive()
    a = attempt(archive)
    b = attempt(archive, op="softmax", verdict="rejected")
    assert main(["attempts", "list"]) == 0
    out = capsys.readouterr().out
    assert a.id in out and b.id in out and "1.50x" in out and "too slow" in out
    assert main(["attempts", "query", "--rejected", "--json"]) == 0
    assert [x["id"] for x in json.loads(capsys.readouterr().out)] == [b.id]
    assert main(["attempts", "--json", "show", a.id[:-1]]) == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == a.sha256
    assert main(["attempts", "show", a.id, "--source"]) == 0
    assert capsys.readouterr().out == "x = 1\n\n"
    assert main(["attempts", "show", "nope"]) == 1
    assert "no attempt id starts with 'nope'" in capsys.readouterr().err


def test_an_empty_archive_says_so(capsys):
    assert main(["attempts", "list"]) == 0
    assert "no attempts archived yet" in capsys.readouterr().out
