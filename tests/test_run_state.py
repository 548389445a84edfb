"""The state file of a generate run (`kforge.gen.run_state`): it round-trips through its file, and a
malformed, truncated or other-version file is rejected with the file and the field named."""
from __future__ import annotations

import json

import pytest
import torch

from kforge.gen import run_state
from kforge.gen.search import Settings


def saved(**changes) -> dict:
    state = run_state.new_state("rms_norm", "cpu", [torch.float32], [(4, 64)], "catalog", None, Settings())
    state.update(changes)
    run_state.save_state(state)
    return state


def test_a_state_round_trips_through_its_file():
    state = saved(round=1, done={"0:0": "a1"}, tried=["ab" * 32], attempts=1)
    assert run_state.load_state(state["run_id"], "rms_norm") == state
    assert run_state.unfinished_runs("rms_norm") == [state]
    assert json.loads(run_state.state_path(state["run_id"]).read_text())["version"] == run_state.STATE_VERSION


@pytest.mark.parametrize("change, field", [
    (lambda s: s.update(version=99), "field 'version' is 99"),
    (lambda s: s.pop("done"), "field 'done' is missing"),
    (lambda s: s.update(round="1"), "field 'round' must be int, got str"),
    (lambda s: s.update(record=1), "field 'record' must be bool, got int"),
    (lambda s: s.update(kind="other"), "field 'kind' is 'other'"),
])
def test_a_malformed_state_file_is_rejected_with_the_file_and_field_named(change, field):
    state = saved()
    change(state)
    path = run_state.state_path(state["run_id"])
    path.write_text(json.dumps(state))
    with pytest.raises(run_state.SearchError, match=field) as info:
        run_state.load_state(state["run_id"], "rms_norm")
    assert str(path) in str(info.value)
    assert run_state.unfinished_runs("rms_norm") == []  # skipped, not fatal, when listing


def test_a_truncated_state_file_is_rejected_with_the_file_named():
    state = saved()
    path = run_state.state_path(state["run_id"])
    path.write_text(path.read_text()[:40])
    with pytest.raises(run_state.SearchError, match="cannot read") as info:
        run_state.load_state(state["run_id"], "rms_norm")
    assert str(path) in str(info.value)


def test_a_finished_or_foreign_run_does_not_resume():
    state = saved(status="ran 1 round(s)")
    with pytest.raises(run_state.SearchError, match="has finished"):
        run_state.load_state(state["run_id"], "rms_norm")
    with pytest.raises(run_state.SearchError, match="is for rms_norm, not softmax"):
        run_state.load_state(saved()["run_id"], "softmax")
