"""Generate's loose ends (`kforge.gen.conclude`): identical sources evaluated once per run, runs
whose provider failed on every attempt or that recorded nothing exit 1 naming why, no speedup
printed for a run that recorded nothing, and `--max-seconds` honoured between candidates.

The provider side is real (the OpenAI and Anthropic clients against loopback servers, the catalog);
the harness is replaced by a counting stand-in where what is tested is the search's bookkeeping,
so no sandboxed worker runs here."""
from __future__ import annotations

import json
import socket
import time

import pytest
import torch

from helpers import cpu_device, fake_openai, make_record
from kforge.catalog import seeds
from kforge.cli.main import main
from kforge.evaluate import harness
from kforge.evaluate.harness import Evaluation, Measurement
from kforge.evaluate.timing import Timing
from kforge.gen import from_misses, run_state, search
from kforge.gen.archive import Archive
from kforge.gen.conclude import Budget
from kforge.gen.providers.catalog import CatalogProvider
from kforge.ops import get_spec
from kforge.records import DispatchKey, Evidence
from kforge.router import misses
from kforge.router.table import ScoreTable

SHAPE = (4, 64)
KEY = DispatchKey("rms_norm", cpu_device(), "float32,float32", SHAPE)
SEED = seeds(get_spec("rms_norm"))[0].read_text()
ANSWER = f"```python\n{SEED}```\n"


def timing(us: float) -> Timing:
    return Timing(us * 0.9, us, us * 1.1, us, "cpu_wall", 5)


class FakeHarness:
    """Stands in for `harness.evaluate_source`: counts the sources it is given and accepts each,
    with a record at KEY unless `records=False`; `sleep_s` per evaluation."""

    def __init__(self, records: bool = True, sleep_s: float = 0.0, stalled: tuple[int, ...] | None = None):
        self.sources: list[str] = []
        self.records, self.sleep_s, self.stalled = records, sleep_s, stalled

    def __call__(self, source, spec, **kwargs):
        self.sources.append(source)
        time.sleep(self.sleep_s)
        m = Measurement(SHAPE, "float32", KEY, timing(2.0), timing(3.0), None)
        impl = f"triton:fake{len(self.sources)}"
        records = [make_record(problem=SHAPE, impl=impl, p50=2.0), make_record(problem=SHAPE, impl="vendor", p50=3.0)]
        evaluation = Evaluation("rms_norm", True, "", sha256="f" * 64, impl=impl, measurements=[m],
                                evidence=Evidence(("float32,float32",), (SHAPE,), (0,), 0.1),
                                records=records if self.records else [])
        if self.stalled:  # as the harness reports a key whose timing stalled twice (`_without_stalls`)
            evaluation.skipped.append({"shape": list(self.stalled), "dtype": "float32",
                                       "why": "implausible timing at ..., refused after one re-timing: stalled"})
        return evaluation


@pytest.fixture
def fake_harness(monkeypatch):
    def install(**options) -> FakeHarness:
        fake = FakeHarness(**options)
        monkeypatch.setattr(harness, "evaluate_source", fake)
        return fake

    return install


def run(provider, **settings):
    from kforge.evaluate.executors import InProcessExecutor

    settings = {"corrective_retries": 0, **settings}
    # One slot: candidates are evaluated one after another (the stand-in harness runs no task).
    return search.run("rms_norm", provider, run_state.Settings(**settings), device="cpu", dtypes=[torch.float32],
                      shapes=[SHAPE], executor=InProcessExecutor())


def generate(capsys, *flags: str) -> tuple[int, dict, str]:
    capsys.readouterr()
    rc = main(["generate", "rms_norm", "--shape", "4x64", "--dtype", "fp32", "--device", "cpu", "--json", *flags])
    out, err = capsys.readouterr()
    return rc, json.loads(out), err


# -- duplicates ------------------------------------------------------------------------------------
def test_an_identical_source_is_evaluated_once_per_run_and_archived_as_a_duplicate(httpserver, monkeypatch,
                                                                                    fake_harness):
    fake = fake_harness()
    # Round 1: the same kernel twice (the second in the same batch); round 2: the same kernel again,
    # with other whitespace outside the code block (the extracted source is what is hashed).
    provider = fake_openai(httpserver, monkeypatch, ANSWER, ANSWER, "Again:\n\n" + ANSWER, ANSWER + "\nDone.",
                           "Reflection.")
    result = run(provider, rounds=2, variants=2, top_k=1)
    assert len(fake.sources) == 1
    attempts = sorted(Archive().query(run_id=result.run_id), key=lambda a: (a.round, a.variant))
    assert [a.verdict for a in attempts] == ["accepted", "duplicate", "duplicate", "duplicate"]
    first = attempts[0]
    assert all(a.check == "duplicate" and a.sha256 == first.sha256 and f"attempt {first.id}" in a.reason
               and not a.measurements for a in attempts[1:])
    assert result.accepted == 1 and result.attempts == 4 and result.failure is None


# -- a provider that failed on every attempt ---------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_run_whose_provider_refused_every_connection_exits_1_naming_the_error(capsys, monkeypatch, fake_harness):
    fake = fake_harness()
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    rc, data, err = generate(capsys, "--provider", "openai", "--base-url", f"http://127.0.0.1:{closed_port()}/v1",
                             "--max-retries", "0", "--rounds", "1", "--variants", "2")
    (run_json,) = data["runs"]
    assert rc == 1 and fake.sources == []
    assert "failed on every attempt (2)" in run_json["failure"] and "cannot connect" in run_json["failure"]
    assert len(run_json["failures"]) == 2 and data["failure"].startswith("rms_norm: the openai provider failed")
    assert "generate failed: rms_norm: the openai provider failed on every attempt" in err


@pytest.mark.parametrize("name, path", [("openai", "/v1/chat/completions"), ("anthropic", "/v1/messages")])
def test_a_run_whose_provider_answered_401_every_time_exits_1_naming_the_status(name, path, capsys, httpserver,
                                                                                 monkeypatch, fake_harness):
    fake_harness()
    httpserver.expect_request(path, method="POST").respond_with_json(
        {"error": {"type": "authentication_error", "message": "invalid x-api-key"}}, status=401)
    monkeypatch.setenv(f"{name.upper()}_API_KEY", "wrong-key")
    base = httpserver.url_for("/v1" if name == "openai" else "").rstrip("/")
    rc, data, _ = generate(capsys, "--provider", name, "--base-url", base, "--max-retries", "0", "--rounds", "2",
                           "--variants", "1")
    (run_json,) = data["runs"]
    assert rc == 1 and run_json["attempts"] == 2 and run_json["best"] is None
    assert "HTTP 401" in run_json["failure"] and "wrong-key" not in json.dumps(data)


def test_a_run_whose_provider_timed_out_every_time_exits_1(capsys, httpserver, monkeypatch, fake_harness):
    def slow(request):
        time.sleep(1.5)
        from werkzeug import Response

        return Response("{}", status=200, content_type="application/json")

    fake_harness()
    httpserver.expect_request("/v1/chat/completions", method="POST").respond_with_handler(slow)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    rc, data, _ = generate(capsys, "--provider", "openai", "--base-url", httpserver.url_for("/v1").rstrip("/"),
                           "--max-retries", "0", "--timeout", "0.3", "--rounds", "1", "--variants", "1")
    assert rc == 1 and "no answer within 0.3 s" in data["runs"][0]["failure"]


def test_one_good_answer_among_provider_errors_is_not_a_failed_run(httpserver, monkeypatch, fake_harness):
    fake_harness()
    httpserver.expect_ordered_request("/v1/chat/completions", method="POST").respond_with_json(
        {"error": {"message": "overloaded"}}, status=500)
    provider = fake_openai(httpserver, monkeypatch, ANSWER, "Reflection.")
    result = run(provider, rounds=2, variants=1, top_k=1)
    assert result.accepted == 1 and len(result.failures) == 1 and result.failure is None


# -- accepted but nothing recorded ---------------------------------------------------------------------
def test_a_run_that_accepted_candidates_but_recorded_nothing_exits_1_and_never_prints_a_speedup(capsys,
                                                                                                 fake_harness):
    fake_harness(records=False)  # as when the evidence does not cover the timed key
    rc, data, err = generate(capsys, "--provider", "catalog", "--rounds", "1", "--variants", "2")
    (run_json,) = data["runs"]
    assert rc == 1 and run_json["accepted"] == 2 and run_json["recorded"] == 0 and run_json["keys"] == []
    assert run_json["best"] is None
    assert "2 candidate(s) accepted but nothing was recorded" in run_json["failure"]
    assert "evidence does not cover the timed keys" in run_json["failure"]
    assert ScoreTable().records(cpu_device(), "rms_norm") == []
    assert "x vs vendor" not in err  # no "best 0.00x" in the progress lines either

    rc = main(["generate", "rms_norm", "--shape", "4x64", "--dtype", "fp32", "--device", "cpu", "--provider",
               "catalog", "--rounds", "1", "--variants", "1"])
    out = capsys.readouterr().out
    assert rc == 1 and "nothing recorded" in out and "x vs vendor" not in out and "failed: 1 candidate(s)" in out


def test_a_run_that_recorded_its_result_succeeds_and_reports_what_it_wrote(capsys, fake_harness):
    fake_harness()
    rc, data, _ = generate(capsys, "--provider", "catalog", "--rounds", "1", "--variants", "1")
    (run_json,) = data["runs"]
    assert rc == 0 and run_json["failure"] is None and run_json["recorded"] == 2
    assert run_json["best"]["speedup"] == pytest.approx(1.5)
    assert {r.impl for r in ScoreTable().records(cpu_device(), "rms_norm")} == {"triton:fake1", "vendor"}


def test_a_key_left_unrecorded_is_named_with_why_in_the_json_and_the_table(capsys, fake_harness):
    """A requested key whose timing was refused (a stall) gets no record; the run says which key
    and why instead of listing only the keys it recorded."""
    fake_harness(stalled=(8, 64))
    rc, data, _ = generate(capsys, "--shape", "8x64", "--provider", "catalog", "--rounds", "1", "--variants", "1")
    (run_json,) = data["runs"]
    assert rc == 0 and [k["shape"] for k in run_json["keys"]] == [list(SHAPE)]
    assert run_json["unrecorded_keys"] == [{"dtype": "float32", "shape": [8, 64], "why": (
        "implausible timing at ..., refused after one re-timing: stalled")}]
    assert {r.key.shape for r in ScoreTable().records(cpu_device(), "rms_norm")} == {SHAPE}
    rc = main(["generate", "rms_norm", "--shape", "4x64", "--shape", "8x64", "--dtype", "fp32", "--device", "cpu",
               "--provider", "catalog", "--rounds", "1", "--variants", "1"])
    assert "not recorded: float32 8x64: implausible timing" in capsys.readouterr().out


def test_a_key_no_candidate_reached_is_named_as_unrecorded(capsys, fake_harness):
    fake_harness(records=False)
    rc, data, _ = generate(capsys, "--provider", "catalog", "--rounds", "1", "--variants", "1")
    (run_json,) = data["runs"]
    assert run_json["unrecorded_keys"] == [{"dtype": "float32", "shape": list(SHAPE),
                                            "why": "no accepted candidate's result there was recordable"}]


# -- the time budget -------------------------------------------------------------------------------------
def test_the_budget_stops_a_run_between_candidates_and_keeps_what_was_done(fake_harness):
    fake = fake_harness(sleep_s=3.0)
    result = run(CatalogProvider(), rounds=3, variants=3, top_k=1, max_seconds=2.5)
    # One evaluation at a time (no executor slots): the first took longer than the whole budget.
    assert len(fake.sources) == 1 and result.budget_stopped and result.status.startswith("time budget spent")
    attempts = Archive().query(run_id=result.run_id)
    assert sorted(a.verdict for a in attempts) == ["accepted", "not run", "not run"]
    assert all(a.check == "budget" for a in attempts if a.verdict == "not run")
    assert result.rounds_done == 0 and result.recorded == 2 and result.failure is None
    assert {r.impl for r in ScoreTable().records(cpu_device(), "rms_norm")} == {"triton:fake1", "vendor"}
    assert json.loads(run_state.state_path(result.run_id).read_text())["budget_stopped"] is True


def test_vendor_timing_of_logged_misses_stops_at_the_budget(kforge_home):
    misses.merge({DispatchKey("rms_norm", cpu_device(), "float32,float32", (4, 48)): (5, 0),
                  DispatchKey("rms_norm", cpu_device(), "float32,float32", (2, 40)): (3, 0)})
    said = []
    spent = Budget(time.monotonic() - 10.0, 5.0)
    assert from_misses.targets("cpu", budget=spent, on_progress=said.append) == []
    assert len(said) == 2 and all("vendor not timed" in s for s in said)
    assert [t.shape for t in from_misses.targets("cpu", budget=Budget(time.monotonic(), 600.0))] != []


def test_generate_from_misses_with_its_budget_spent_on_vendor_timing_runs_nothing_and_says_so(capsys, fake_harness):
    fake = fake_harness()
    misses.merge({DispatchKey("rms_norm", cpu_device(), "float32,float32", (4, 48)): (5, 0)})
    capsys.readouterr()
    rc = main(["generate", "--from-misses", "--provider", "catalog", "--device", "cpu", "--max-seconds", "0",
               "--json"])
    data = json.loads(capsys.readouterr().out)
    assert fake.sources == [] and data["runs"] == [] and data["budget_stopped"] is True
    assert rc == 1 and data["failure"].startswith("time budget spent")
