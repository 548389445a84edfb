"""The state of one `kforge generate` run on disk: `<home>/runs/<run id>.json`, saved after every
attempt so that `run(..., resume=RUN_ID)` continues where an interrupted run stopped.

The file is versioned (`version`); a file of another version, a truncated file or one whose fields
have the wrong type is rejected with a SearchError naming the file and the field.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import secrets
from typing import Any

import torch

from kforge import paths
from kforge.device import fingerprint
from kforge.errors import KforgeError
from kforge.files import atomic_write_json, read_json
from kforge.gen.types import Usage

STATE_KIND = "kforge-generate-run"
STATE_VERSION = 1
# field -> the JSON types it may hold; what a resumed run reads without further checks.
FIELDS: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "op": (str,), "device": (str,), "fingerprint": (str,), "dtypes": (list,), "shapes": (list,),
    "provider": (str,), "model": (str, type(None)), "settings": (dict,), "record": (bool,), "round": (int,),
    "done": (dict,), "tried": (list,), "lineages": (list,), "feedback": (list,), "best": (dict,),
    "before": (dict, type(None)), "attempts": (int,), "accepted": (int,), "usage": (dict,),
    "elapsed_s": (int, float), "status": (str,), "started": (str,)}


class SearchError(KforgeError):
    """A run that cannot start or resume (unknown run id, a run of another op, a malformed state file)."""


def runs_dir():
    return paths.home() / "runs"


def state_path(run_id: str):
    return runs_dir() / f"{run_id}.json"


def new_run_id(op: str) -> str:
    return f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%dT%H%M%S')}-{op}-{secrets.token_hex(3)}"


def new_state(op: str, device: str, dtypes, shapes, provider_name: str, model: str | None, settings: Any) -> dict:
    return {"kind": STATE_KIND, "version": STATE_VERSION, "run_id": new_run_id(op), "op": op,
            "device": str(torch.device(device)), "fingerprint": str(fingerprint(torch.device(device))),
            "dtypes": [str(d).removeprefix("torch.") for d in dtypes], "shapes": [list(s) for s in shapes],
            "provider": provider_name, "model": model, "settings": dataclasses.asdict(settings), "record": True,
            "round": 0, "done": {}, "tried": [], "lineages": [], "feedback": [], "best": {}, "before": None,
            "attempts": 0, "accepted": 0, "usage": Usage().to_json(), "elapsed_s": 0.0, "status": "",
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def save_state(state: dict) -> None:
    atomic_write_json(state_path(state["run_id"]), state)


def validate(state: Any, path) -> dict:
    """The state read from `path`, checked field by field; SearchError naming the file and field."""
    if not isinstance(state, dict):
        raise SearchError(f"{path}: not a generate run's state (a JSON object), got {type(state).__name__}")
    if state.get("kind") != STATE_KIND:
        raise SearchError(f"{path}: field 'kind' is {state.get('kind')!r}, not {STATE_KIND!r}: not a generate run")
    # Files written before the version field existed have the same layout as version 1.
    version = state.get("version", STATE_VERSION)
    if version != STATE_VERSION:
        raise SearchError(f"{path}: field 'version' is {version!r}; this kforge reads version {STATE_VERSION}")
    for name, types in FIELDS.items():
        if name not in state:
            raise SearchError(f"{path}: field '{name}' is missing (a truncated or hand-edited state file)")
        value = state[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise SearchError(f"{path}: field '{name}' must be {' or '.join(t.__name__ for t in types)}, "
                              f"got {type(value).__name__}")
    return state


def load_state(run_id: str, op: str) -> dict:
    """The unfinished run `run_id` of `op`; SearchError when it is unknown, malformed, another op's or finished."""
    path = state_path(run_id)
    try:
        raw = read_json(path)
    except FileNotFoundError:
        known = sorted(p.stem for p in runs_dir().glob("*.json")) if runs_dir().is_dir() else []
        raise SearchError(f"generate --resume {run_id}: no such run under {runs_dir()}; "
                          f"known: {', '.join(known[-5:]) or '(none)'}") from None
    except (OSError, ValueError) as exc:  # CorruptFile is a ValueError
        raise SearchError(f"generate --resume {run_id}: cannot read {path}: {exc}") from None
    try:
        state = validate(raw, path)
    except SearchError as exc:
        raise SearchError(f"generate --resume {run_id}: {exc}") from None
    if state["op"] != op:
        raise SearchError(f"generate --resume {run_id}: that run is for {state['op']}, not {op}")
    if state["status"]:
        raise SearchError(f"generate --resume {run_id}: that run has finished ({state['status']})")
    return state


def unfinished_runs(op: str | None = None) -> list[dict]:
    """States of runs that stopped before finishing (newest last); unreadable files are skipped."""
    out = []
    for path in sorted(runs_dir().glob("*.json")) if runs_dir().is_dir() else []:
        try:
            state = validate(read_json(path), path)
        except (OSError, ValueError, SearchError):
            continue
        if not state["status"] and (op is None or state["op"] == op):
            out.append(state)
    return out
