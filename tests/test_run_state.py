"""The state of a generate run (`kforge.gen.run_state.RunState`): it round-trips through its file with
its nested parts typed, and a malformed, truncated or other-version file is rejected with the file and
the field named."""
from __future__ import annotations

import json

import pytest
import torch

from kforge.gen import run_state
from kforge.gen.prompt import Feedback, FeedbackKind
from kforge.gen.run_state import KeyBefore, KeyBest, RunState, Settings, Variant
from kforge.gen.types import Usage

MEASUREMENT = {"shape": [4, 64], "dtype": "float32", "candidate": {"p50_us": 3.5}, "vendor": {"p50_us": 4.0},
               "speedup_vs_vendor": 4.0 / 3.5, "roofline": None}


def saved(**changes) -> RunState:
    state = RunState.new("rms_norm", "cpu", [torch.float32], [(4, 64)], "catalog", None, Settings())
    for name, value in changes.items():
        setattr(state, name, value)
    state.save()
    return state


def written(state: RunState) -> dict:
    return json.loads(run_state.state_path(state.run_id).read_text())


def test_a_state_round_trips_through_its_file():
    state = saved(round=1, done={"0:0": "a1"}, tried=["ab" * 32], attempts=1)
    assert RunState.resume(state.run_id, "rms_norm") == state
    assert run_state.unfinished_runs("rms_norm") == [state]
    assert written(state)["version"] == run_state.STATE_VERSION


def test_every_nested_part_comes_back_typed_and_the_file_keeps_its_keys():
    variant = Variant("ab" * 32, "a1", "source", 4.0 / 3.5, 0.25, [MEASUREMENT])
    state = saved(settings=Settings(rounds=2, variants=1, top_k=1, target_speedup=1.5, verify_shapes=((4, 64), (3, 100))),
                  round=1, done={"0:0": "a1"}, tried=[variant.sha256], lineages=[variant],
                  feedback=[Feedback(FeedbackKind.CORRECTNESS, "error-budget: 0.5 over 0.01", "shape (4, 64) seed 1")],
                  best={"k": KeyBest(3.5, 4.0, "triton:abababababab", "a1", [4, 64], "float32")},
                  before={"k": KeyBefore("vendor", 4.1, 4.3)}, attempts=1, accepted=1,
                  usage=Usage(120, 30, 0.002), elapsed_s=12.5)
    back = RunState.resume(state.run_id, "rms_norm")
    assert back == state
    assert back.settings.verify_shapes == ((4, 64), (3, 100)) and back.shapes == [(4, 64)]
    assert back.leader is back.lineages[0] and back.leader.measurements == [MEASUREMENT]
    assert back.feedback[0].kind is FeedbackKind.CORRECTNESS and back.usage.cost_usd == 0.002
    assert back.torch_dtypes == [torch.float32]
    # The layout of version 1 files, key for key: files of earlier runs still resume.
    data = written(state)
    assert set(data) == {"kind", "version", *run_state.FIELDS, *run_state.OPTIONAL}
    assert data["lineages"] == [{"sha256": "ab" * 32, "attempt_id": "a1", "source": "source", "speedup": 4.0 / 3.5,
                                 "fraction": 0.25, "measurements": [MEASUREMENT]}]
    assert data["feedback"] == [{"kind": "correctness", "message": "error-budget: 0.5 over 0.01",
                                 "case": "shape (4, 64) seed 1"}]
    assert data["best"]["k"] == {"p50_us": 3.5, "vendor_p50_us": 4.0, "impl": "triton:abababababab",
                                 "attempt_id": "a1", "shape": [4, 64], "dtype": "float32"}
    assert data["before"] == {"k": {"impl": "vendor", "p50_us": 4.1, "score_us": 4.3}}
    assert data["settings"]["verify_shapes"] == [[4, 64], [3, 100]] and data["usage"]["input_tokens"] == 120
    del data["learned"]  # written by runs since it exists; older files lack it
    run_state.state_path(state.run_id).write_text(json.dumps(data))
    assert RunState.resume(state.run_id, "rms_norm").learned is False


@pytest.mark.parametrize("change, field", [
    (lambda s: s.update(version=99), "field 'version' is 99"),
    (lambda s: s.pop("done"), "field 'done' is missing"),
    (lambda s: s.update(round="1"), "field 'round' must be int, got str"),
    (lambda s: s.update(record=1), "field 'record' must be bool, got int"),
    (lambda s: s.update(kind="other"), "field 'kind' is 'other'"),
    (lambda s: s.update(learned="yes"), "field 'learned' must be bool, got str"),
    (lambda s: s.update(lineages=[{"sha256": "ab"}]), "field 'lineages' does not hold"),
    (lambda s: s.update(feedback=[{"kind": "mood", "message": "m"}]), "field 'feedback' does not hold"),
    (lambda s: s.update(best={"k": {"p50_us": 1.0}}), "field 'best' does not hold"),
    (lambda s: s.update(settings={"rounds": 0}), "field 'settings' does not hold"),
    (lambda s: s.update(settings={"turns": 2}), "field 'settings' does not hold"),
    (lambda s: s.update(dtypes=["float33"]), "field 'dtypes' does not hold"),
    (lambda s: s.update(shapes=[4]), "field 'shapes' does not hold"),
    (lambda s: s.update(usage={"tokens": 3}), "field 'usage' does not hold"),
])
def test_a_malformed_state_file_is_rejected_with_the_file_and_field_named(change, field):
    state = saved()
    data = written(state)
    change(data)
    path = run_state.state_path(state.run_id)
    path.write_text(json.dumps(data))
    with pytest.raises(run_state.SearchError, match=field) as info:
        RunState.resume(state.run_id, "rms_norm")
    assert str(path) in str(info.value)
    with pytest.raises(run_state.SearchError, match=field):
        RunState.from_json(data, path)
    assert run_state.unfinished_runs("rms_norm") == []  # skipped, not fatal, when listing


def test_a_truncated_state_file_is_rejected_with_the_file_named():
    state = saved()
    path = run_state.state_path(state.run_id)
    path.write_text(path.read_text()[:40])
    with pytest.raises(run_state.SearchError, match="cannot read") as info:
        RunState.resume(state.run_id, "rms_norm")
    assert str(path) in str(info.value)


def test_a_finished_foreign_or_unknown_run_does_not_resume():
    state = saved(status="ran 1 round(s)")
    with pytest.raises(run_state.SearchError, match="has finished"):
        RunState.resume(state.run_id, "rms_norm")
    with pytest.raises(run_state.SearchError, match="is for rms_norm, not softmax"):
        RunState.resume(saved().run_id, "softmax")
    with pytest.raises(run_state.SearchError, match=f"no such run under .*known: .*{state.run_id}"):
        RunState.resume("20260101T000000-rms_norm-000000", "rms_norm")
