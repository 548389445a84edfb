"""The search loop (`kforge.gen.search`) and `kforge generate` on CPU, with the catalog provider and
Triton's interpreter: kernels are proposed, verified in sandboxed workers, archived and recorded;
an interrupted run resumes; a malformed answer gets one corrective re-prompt; `--from-misses`
picks up the keys earlier op calls logged."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

import kforge
from kforge.backends.triton import TritonBackend
from kforge.cli.main import main
from kforge.device import fingerprint
from kforge.evaluate.executors import LocalPoolExecutor
from kforge.gen import from_misses, run_state, search
from kforge.gen.archive import Archive
from kforge.gen.providers.catalog import CatalogProvider
from kforge.gen.types import Completion, Provider
from kforge.router import dispatch
from kforge.router.table import ScoreTable

pytestmark = pytest.mark.skipif(
    TritonBackend().available() is not None, reason=f"Triton cannot run here: {TritonBackend().available()}")

SHAPE = (4, 64)
QUICK = dict(verify_shapes=((4, 64), (3, 100)), timeout_s=300.0)


@pytest.fixture(scope="module")
def executor():
    with LocalPoolExecutor([], workers=2) as pool:
        yield pool


def run(provider, executor, **settings):
    return search.run("rms_norm", provider, run_state.Settings(**{**QUICK, **settings}), device="cpu",
                      dtypes=[torch.float32], shapes=[SHAPE], executor=executor)


def test_a_catalog_run_archives_every_attempt_and_records_the_best(executor):
    result = run(CatalogProvider(), executor, rounds=2, variants=2, top_k=1)
    attempts = Archive().query(op="rms_norm", run_id=result.run_id)
    assert len(attempts) == result.attempts == 4
    accepted = [a for a in attempts if a.accepted]
    assert len(accepted) == result.accepted >= 2
    assert {(a.round, a.variant) for a in attempts} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert all(a.source and a.sha256 and a.provider == "catalog" and a.measurements for a in accepted)
    # Round 1 continues the best of round 0: its parent is an accepted attempt of this run.
    assert {a.parent for a in attempts if a.round == 1} <= {a.id for a in accepted if a.round == 0}
    # The fastest kernel per key went to the table, with vendor from the same run and provenance.
    (key,) = result.keys
    fp = str(fingerprint(torch.device("cpu")))
    records = {r.impl: r for r in ScoreTable().records(fp, "rms_norm") if list(r.key.shape) == list(SHAPE)}
    assert "vendor" in records
    # Each variant that was the fastest so far was recorded when it was measured: the last of them wins.
    triton = {r.attempt_id: r for r in records.values() if r.backend == "triton"}
    best = triton[key["kernel"]["attempt_id"]]
    assert best.provider == "catalog" and best.p50_us == min(r.p50_us for r in triton.values())
    assert best.p50_us == pytest.approx(min(m["candidate"]["p50_us"] for a in accepted for m in a.measurements))
    state = json.loads(run_state.state_path(result.run_id).read_text())
    assert state["status"] == result.status == "ran 2 round(s)"
    # The next op calls are routed by those records (a hit, whichever implementation is faster).
    dispatch.reset()
    x, w, eps = kforge.ops.SPECS["rms_norm"].make_inputs(SHAPE, torch.float32, "cpu", 5)
    torch.testing.assert_close(kforge.ops.rms_norm(x, w, eps), torch.rms_norm(x, (64,), w, eps))
    assert kforge.stats()["ops"]["rms_norm"]["hit"] == 1


class Interrupting(Provider):
    """The catalog, interrupted (as by Ctrl-C) at its `stop_at`-th answer."""

    name = "catalog"
    reflects = False  # the catalog's capability, copied: it writes no reflection

    def __init__(self, stop_at: int):
        self.inner, self.calls, self.stop_at, self.asked = CatalogProvider(), 0, stop_at, []

    def complete(self, messages, *, context=None, **params):
        self.calls += 1
        self.asked.append((context.round, context.variant))
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.inner.complete(messages, context=context, **params)


def test_an_interrupted_run_resumes_where_it_stopped(executor):
    with pytest.raises(KeyboardInterrupt):
        run(Interrupting(stop_at=3), executor, rounds=2, variants=2, top_k=1)
    (pending,) = run_state.unfinished_runs("rms_norm")
    assert pending.round == 1 and set(pending.done) == {"0:0", "0:1"}
    resumed = Interrupting(stop_at=0)  # never interrupts: records what the resumed run asks for
    result = search.run("rms_norm", resumed, resume=pending.run_id, executor=executor)
    assert resumed.asked == [(1, 0), (1, 1)]  # only the candidates the saved state had not done
    assert result.run_id == pending.run_id and result.attempts == 4
    attempts = Archive().query(run_id=result.run_id)
    assert sorted((a.round, a.variant) for a in attempts) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert run_state.unfinished_runs("rms_norm") == []
    with pytest.raises(run_state.SearchError, match="has finished"):
        search.run("rms_norm", CatalogProvider(), resume=pending.run_id, executor=executor)


class Recording(Provider):
    """Answers prose (no candidate to evaluate) and keeps what each request held."""

    name = "scripted"
    reflects = False

    def __init__(self):
        self.asked = []

    def complete(self, messages, *, context=None, **params):
        self.asked.append((context, list(messages)))
        return Completion("No code today.", "scripted", "m1")


def test_a_resumed_run_continues_from_its_typed_state(executor):
    """A state built from its types (a lineage, a failure, a round done) and resumed: the run takes
    its settings, continues the saved lineage, shows the saved failure and keeps its best."""
    from kforge.catalog import seeds
    from kforge.gen.prompt import Feedback, FeedbackKind

    source = seeds(kforge.ops.SPECS["rms_norm"])[0].read_text()
    sha = hashlib.sha256(source.encode()).hexdigest()
    leader = run_state.Variant(sha, "a0", source, 1.25, None, [])
    state = run_state.RunState.new("rms_norm", "cpu", [torch.float32], [SHAPE], "scripted", None,
                                   run_state.Settings(rounds=2, variants=1, top_k=1, corrective_retries=0))
    state.round, state.done, state.tried, state.attempts, state.accepted = 1, {"0:0": "a0"}, [sha], 1, 1
    state.lineages = [leader]
    key = kforge.records.DispatchKey("rms_norm", str(fingerprint(torch.device("cpu"))), "float32,float32", SHAPE)
    state.best = {str(key): run_state.KeyBest(2.0, 2.5, f"triton:{sha[:12]}", "a0", list(SHAPE), "float32")}
    state.feedback = [Feedback(FeedbackKind.CORRECTNESS, "error-budget: 0.5 over 0.01 at index (2, 17)")]
    state.save()
    provider = Recording()
    result = search.run("rms_norm", provider, run_state.Settings(rounds=9, variants=3), resume=state.run_id,
                        executor=executor)
    ((context, messages),) = provider.asked  # round 2 of 2, its one variant: the saved settings, not these
    assert (context.round, context.variant, context.parent_sha256) == (1, 0, sha) and sha in context.exclude
    assert "error-budget: 0.5 over 0.01 at index (2, 17)" in messages[-1].content
    assert result.status == "ran 2 round(s)" and result.attempts == 2 and result.best == leader
    assert run_state.unfinished_runs("rms_norm") == []
    saved = json.loads(run_state.state_path(state.run_id).read_text())
    assert [f["kind"] for f in saved["feedback"]] == ["correctness", "format"] and saved["learned"] is True


def test_generate_resume_latest_picks_the_newest_unfinished_run_of_the_op(capsys):
    assert main(["generate", "rms_norm", "--resume", "latest", "--provider", "catalog", "--device", "cpu"]) != 0
    assert "--resume: no unfinished run of rms_norm" in capsys.readouterr().err
    older, newer = (run_state.RunState.new("rms_norm", "cpu", [torch.float32], [SHAPE], "catalog", None,
                                           run_state.Settings(rounds=1, variants=1)) for _ in range(2))
    older.run_id, newer.run_id = "20260101T000000-rms_norm-aaaaaa", "20260102T000000-rms_norm-bbbbbb"
    for state in (older, newer):
        state.round = 1  # its rounds all done: the resumed run only concludes
        state.save()
    assert main(["generate", "rms_norm", "--resume", "latest", "--provider", "catalog", "--device", "cpu",
                 "--json"]) == 0
    (resumed,) = json.loads(capsys.readouterr().out)["runs"]
    assert resumed["run_id"] == newer.run_id and resumed["status"] == "ran 1 round(s)"
    assert [s.run_id for s in run_state.unfinished_runs("rms_norm")] == [older.run_id]


class MalformedFirst(Provider):
    """Answers prose without code, then (after the corrective message) the catalog's seed."""

    name = "scripted"

    def __init__(self):
        self.inner, self.seen = CatalogProvider(), []

    def complete(self, messages, *, context=None, **params):
        self.seen.append(list(messages))
        if context is None:  # asked to reflect on the run
            return Completion("One program per row kept rms_norm memory-bound at 4x64 fp32.", "scripted", "m1")
        if len(self.seen) == 1:
            return Completion("I would use one program per row, with fp32 statistics.", "scripted", "m1")
        return Completion(self.inner.complete(messages, context=context).text, "scripted", "m1")


def test_a_malformed_answer_gets_one_corrective_reprompt_and_the_model_reflects(executor):
    from kforge.gen import knowledge

    provider = MalformedFirst()
    result = run(provider, executor, rounds=1, variants=1)
    assert len(provider.seen) == 3
    second = provider.seen[1]
    assert second[-2].content.startswith("I would use one program") and second[-1].role.value == "user"
    (attempt,) = Archive().query(run_id=result.run_id)
    assert attempt.accepted and len(attempt.messages) == len(second)
    # After the run: the measured best variant and the model's reflection on it, both scoped.
    reflection = provider.seen[2][-1].content
    assert "rms_norm" in reflection and attempt.sha256[:12] in reflection
    learned = [e for e in knowledge.load("rms_norm") if e.origin == knowledge.Origin.USER]
    assert len(learned) == 2 and learned[1].title.startswith("Reflection (scripted)")
    assert learned[1].text == "One program per row kept rms_norm memory-bound at 4x64 fp32."
    assert learned[1].dtypes == ("float32",) and learned[0].measured == learned[1].measured


def test_the_reflects_flag_not_the_name_decides_whether_the_provider_reflects(executor):
    quiet = MalformedFirst()
    quiet.reflects = False
    run(quiet, executor, rounds=1, variants=1)
    assert len(quiet.seen) == 2  # answer, corrective answer: no reflection asked for
    named_catalog = MalformedFirst()
    named_catalog.name = "catalog"  # a name the search once compared against
    run(named_catalog, executor, rounds=1, variants=1)
    assert len(named_catalog.seen) == 3 and named_catalog.seen[2][-1].role.value == "user"


class AlwaysProse(Provider):
    name = "scripted"

    def complete(self, messages, *, context=None, **params):
        return Completion("No code today.", "scripted", "m1")


def test_an_answer_without_code_twice_is_archived_as_rejected_and_fed_back(executor):
    provider = AlwaysProse()
    result = run(provider, executor, rounds=2, variants=1)
    attempts = Archive().query(run_id=result.run_id)
    assert [a.verdict for a in attempts] == ["rejected", "rejected"] and all(a.check == "format" for a in attempts)
    state = json.loads(run_state.state_path(result.run_id).read_text())
    assert state["feedback"] and state["feedback"][-1]["kind"] == "format"
    assert result.accepted == 0 and result.keys == []


def test_from_misses_picks_up_logged_keys_and_fills_them(capsys):
    spec = kforge.ops.SPECS["rms_norm"]
    for seed in range(3):
        kforge.ops.rms_norm(*spec.make_inputs(SHAPE, torch.float32, "cpu", seed))
    kforge.flush()
    (target,) = from_misses.targets("cpu")
    assert (target.op, target.shape, target.dtype, target.calls) == ("rms_norm", SHAPE, "float32", 3)
    assert target.source == "vendor timed now" and target.saving_us > 0
    code = main(["generate", "--from-misses", "--limit", "1", "--provider", "catalog", "--rounds", "1",
                 "--variants", "1", "--device", "cpu", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    (run_json,) = out["runs"]
    assert run_json["op"] == "rms_norm" and run_json["accepted"] == 1
    (key,) = run_json["keys"]
    assert key["shape"] == list(SHAPE) and key["before"]["p50_us"] is None
    dispatch.reset()
    kforge.ops.rms_norm(*spec.make_inputs(SHAPE, torch.float32, "cpu", 9))
    assert kforge.stats()["ops"]["rms_norm"]["hit"] == 1  # no longer a miss


@pytest.mark.parametrize("name", ["anthropic", "openai"])
def test_through_a_real_sdk_a_malformed_answer_then_a_good_one_is_accepted(name, httpserver, monkeypatch, executor):
    """The real client against a loopback server: prose first, the corrective re-prompt, then code."""
    from kforge.catalog import seeds
    from kforge.gen.config import load_config
    from kforge.gen.providers import make_provider
    from kforge.ops import get_spec

    good = f"Here it is:\n```python\n{seeds(get_spec('rms_norm'))[0].read_text()}```\n"
    if name == "anthropic":
        path, answer = "/v1/messages", lambda text: {
            "id": "m", "type": "message", "role": "assistant", "model": "claude-sonnet-5-5", "stop_reason": "end_turn",
            "stop_sequence": None, "content": [{"type": "text", "text": text}],
            "usage": {"input_tokens": 3000, "output_tokens": 900}}
    else:
        path, answer = "/v1/chat/completions", lambda text: {
            "id": "c", "object": "chat.completion", "created": 0, "model": "gpt-4.1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3000, "completion_tokens": 900, "total_tokens": 3900}}
    httpserver.expect_ordered_request(path, method="POST").respond_with_json(answer("Use one program per row."))
    httpserver.expect_ordered_request(path, method="POST").respond_with_json(answer(good))
    httpserver.expect_ordered_request(path, method="POST").respond_with_json(answer("Rows in registers won."))
    monkeypatch.setenv(f"{name.upper()}_API_KEY", "test-key")
    base = httpserver.url_for("/v1" if name == "openai" else "").rstrip("/")
    provider = make_provider(load_config(provider=name, base_url=base, max_retries="0"))
    result = run(provider, executor, rounds=1, variants=1)
    assert len(httpserver.log) == 3  # answer, corrective answer, reflection on the run
    second = json.loads(httpserver.log[1][0].get_data())["messages"]
    assert second[-2]["content"] == "Use one program per row." and second[-2]["role"] == "assistant"
    (attempt,) = Archive().query(run_id=result.run_id)
    assert attempt.accepted and attempt.provider == name
    assert attempt.usage["input_tokens"] == 6000 and attempt.usage["output_tokens"] == 1800
    assert result.usage.input_tokens == 9000  # the reflection counts against the run's budget too
