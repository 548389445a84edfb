"""The state of one `kforge generate` run (`RunState`) and its file, `<home>/runs/<run id>.json`,
saved after every attempt so that `run(..., resume=RUN_ID)` continues where an interrupted run stopped.

    state = RunState.new("rms_norm", "cuda", [torch.bfloat16], [(32, 4096)], "catalog", None, Settings())
    state.save()
    state = RunState.resume(state.run_id, "rms_norm")   # SearchError unless unfinished and of that op

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
from kforge.gen.prompt import Feedback
from kforge.gen.types import Usage

STATE_KIND = "kforge-generate-run"
STATE_VERSION = 1
# field -> the JSON types it may hold; the nested parts are then read by their own types.
FIELDS: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "op": (str,), "device": (str,), "fingerprint": (str,), "dtypes": (list,), "shapes": (list,),
    "provider": (str,), "model": (str, type(None)), "settings": (dict,), "record": (bool,), "round": (int,),
    "done": (dict,), "tried": (list,), "lineages": (list,), "feedback": (list,), "best": (dict,),
    "before": (dict, type(None)), "attempts": (int,), "accepted": (int,), "usage": (dict,),
    "elapsed_s": (int, float), "status": (str,), "started": (str,)}
# Absent in files of runs that never got there, or written before the field existed.
OPTIONAL: dict[str, tuple[type, ...]] = {"learned": (bool,), "evaluated": (dict,), "provider_errors": (list,),
                                         "recorded": (int,), "unrecorded": (list,), "budget_stopped": (bool,),
                                         "skipped": (dict,)}


def key_label(dtype: str, shape) -> str:
    """The (dtype, shape) of a requested key as text: "float32 8x1000"."""
    return f"{dtype} {'x'.join(str(int(n)) for n in shape)}"


class SearchError(KforgeError):
    """A run that cannot start or resume (unknown run id, a run of another op, a malformed state file)."""


@dataclasses.dataclass(frozen=True)
class Settings:
    rounds: int = 3
    variants: int = 4  # per round
    top_k: int = 2  # lineages kept
    target_speedup: float | None = None  # stop once the best variant beats vendor by this (geomean over keys)
    target_fraction: float | None = None  # stop once the best variant reaches this roofline fraction on every key
    max_tokens: int | None = None  # input + output tokens over the run
    max_seconds: float | None = None
    corrective_retries: int = 1  # re-prompts for a malformed answer
    timeout_s: float = 600.0  # one candidate's evaluation
    verify_shapes: tuple[tuple[int, ...], ...] | None = None  # None: the spec's shape sets (tests shrink them)

    def __post_init__(self) -> None:
        for name in ("rounds", "variants", "top_k"):
            if getattr(self, name) < 1:
                raise KforgeError(f"generate: --{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Settings:
        shapes = data.get("verify_shapes")
        return cls(**{**data, "verify_shapes": None if shapes is None else tuple(tuple(s) for s in shapes)})


@dataclasses.dataclass
class Variant:
    """An accepted candidate: what the lineages, the prompts' priors and the summary read."""

    sha256: str
    attempt_id: str
    source: str
    speedup: float  # geometric mean over measured keys of vendor p50 / candidate p50 (same run)
    fraction: float | None  # lowest fraction of the roofline over measured keys
    measurements: list[dict]  # Measurement.to_json() of each key

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class KeyBest:
    """The run's fastest accepted kernel at one key, with vendor as timed in the same evaluation."""

    p50_us: float
    vendor_p50_us: float
    impl: str
    attempt_id: str
    shape: list[int]
    dtype: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class KeyBefore:
    """What the router would have picked at a key before the run (its fastest record)."""

    impl: str
    p50_us: float
    score_us: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class RunState:
    run_id: str
    op: str
    device: str  # torch.device text, "cuda:0"
    fingerprint: str  # DeviceFingerprint text of `device`
    dtypes: list[str]  # torch dtype names, "bfloat16"
    shapes: list[tuple[int, ...]]  # timing shapes
    provider: str
    model: str | None
    settings: Settings
    record: bool = True  # write the best kernel per key to the score table
    round: int = 0  # the round in progress
    done: dict[str, str] = dataclasses.field(default_factory=dict)  # "round:variant" -> attempt id
    tried: list[str] = dataclasses.field(default_factory=list)  # sha256 of every source evaluated, sorted
    lineages: list[Variant] = dataclasses.field(default_factory=list)  # the top_k accepted, fastest first
    feedback: list[Feedback] = dataclasses.field(default_factory=list)  # the last failures, oldest first
    best: dict[str, KeyBest] = dataclasses.field(default_factory=dict)  # str(DispatchKey) -> best
    before: dict[str, KeyBefore] | None = None  # str(DispatchKey) -> the router's pick before the run
    attempts: int = 0
    accepted: int = 0
    usage: Usage = dataclasses.field(default_factory=Usage)
    elapsed_s: float = 0.0  # wall time over every session of the run
    status: str = ""  # "" while unfinished, else why it stopped
    started: str = ""  # ISO time, UTC
    learned: bool = False  # the knowledge file has this run's entries
    evaluated: dict[str, str] = dataclasses.field(default_factory=dict)  # sha256 -> the attempt that evaluated it
    provider_errors: list[str] = dataclasses.field(default_factory=list)  # one per attempt the provider failed
    recorded: int = 0  # score-table records this run wrote
    unrecorded: list[str] = dataclasses.field(default_factory=list)  # why accepted candidates wrote no record
    budget_stopped: bool = False  # the time budget ended the run
    # "dtype shape" (`key_label`) -> why an accepted candidate's timing there was not recorded (the last one)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def new(cls, op: str, device: str, dtypes, shapes, provider_name: str, model: str | None,
            settings: Settings) -> RunState:
        return cls(run_id=new_run_id(op), op=op, device=str(torch.device(device)),
                   fingerprint=str(fingerprint(torch.device(device))),
                   dtypes=[str(d).removeprefix("torch.") for d in dtypes], shapes=[tuple(s) for s in shapes],
                   provider=provider_name, model=model, settings=settings,
                   started=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    @property
    def torch_dtypes(self) -> list[torch.dtype]:
        return [getattr(torch, d) for d in self.dtypes]

    def unrecorded_keys(self) -> list[dict]:
        """The requested (dtype, shape) keys with no recorded result, each with why (the run's own
        account: a stalled timing, no accepted candidate, the budget)."""
        done = {key_label(b.dtype, b.shape) for b in self.best.values()}
        out = []
        for dtype in self.dtypes:
            for shape in self.shapes:
                label = key_label(dtype, shape)
                if label not in done:
                    why = self.skipped.get(label) or ("no candidate was accepted" if not self.accepted else
                                                      "no accepted candidate's result there was recordable")
                    out.append({"dtype": dtype, "shape": list(shape), "why": why})
        return out

    @property
    def leader(self) -> Variant | None:
        """The fastest accepted variant so far."""
        return self.lineages[0] if self.lineages else None

    def to_json(self) -> dict:
        return {"kind": STATE_KIND, "version": STATE_VERSION, "run_id": self.run_id, "op": self.op,
                "device": self.device, "fingerprint": self.fingerprint, "dtypes": list(self.dtypes),
                "shapes": [list(s) for s in self.shapes], "provider": self.provider, "model": self.model,
                "settings": self.settings.to_json(), "record": self.record, "round": self.round,
                "done": dict(self.done), "tried": list(self.tried), "lineages": [v.to_json() for v in self.lineages],
                "feedback": [{"kind": f.kind.value, "message": f.message, "case": f.case} for f in self.feedback],
                "best": {k: b.to_json() for k, b in self.best.items()},
                "before": None if self.before is None else {k: b.to_json() for k, b in self.before.items()},
                "attempts": self.attempts, "accepted": self.accepted, "usage": self.usage.to_json(),
                "elapsed_s": self.elapsed_s, "status": self.status, "started": self.started, "learned": self.learned,
                "evaluated": dict(self.evaluated), "provider_errors": list(self.provider_errors),
                "recorded": self.recorded, "unrecorded": list(self.unrecorded), "budget_stopped": self.budget_stopped,
                "skipped": dict(self.skipped)}

    @classmethod
    def from_json(cls, data: Any, path) -> RunState:
        """The state in `data`, read from `path`, checked field by field; SearchError naming the file and field."""
        _check(data, path)
        parts = {name: data[name] for name in FIELDS}
        readers = {"settings": Settings.from_json, "dtypes": lambda v: [_dtype_name(d) for d in v],
                   "shapes": lambda v: [tuple(int(n) for n in s) for s in v],
                   "lineages": lambda v: [Variant(**x) for x in v], "feedback": lambda v: [Feedback(**f) for f in v],
                   "best": lambda v: {k: KeyBest(**b) for k, b in v.items()},
                   "before": lambda v: None if v is None else {k: KeyBefore(**b) for k, b in v.items()},
                   "usage": lambda v: Usage(**v)}
        for name, read in readers.items():
            try:
                parts[name] = read(data[name])
            except (TypeError, ValueError, AttributeError, KforgeError) as exc:
                raise SearchError(f"{path}: field '{name}' does not hold a run's {name}: {exc}") from None
        defaults = {"learned": False, "evaluated": {}, "provider_errors": [], "recorded": 0, "unrecorded": [],
                    "budget_stopped": False, "skipped": {}}
        return cls(**parts, **{name: data.get(name, default) for name, default in defaults.items()})

    def save(self) -> None:
        atomic_write_json(state_path(self.run_id), self.to_json())

    @classmethod
    def resume(cls, run_id: str, op: str) -> RunState:
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
            state = cls.from_json(raw, path)
        except SearchError as exc:
            raise SearchError(f"generate --resume {run_id}: {exc}") from None
        if state.op != op:
            raise SearchError(f"generate --resume {run_id}: that run is for {state.op}, not {op}")
        if state.status:
            raise SearchError(f"generate --resume {run_id}: that run has finished ({state.status})")
        return state


def _check(data: Any, path) -> None:
    if not isinstance(data, dict):
        raise SearchError(f"{path}: not a generate run's state (a JSON object), got {type(data).__name__}")
    if data.get("kind") != STATE_KIND:
        raise SearchError(f"{path}: field 'kind' is {data.get('kind')!r}, not {STATE_KIND!r}: not a generate run")
    # Files written before the version field existed have the same layout as version 1.
    version = data.get("version", STATE_VERSION)
    if version != STATE_VERSION:
        raise SearchError(f"{path}: field 'version' is {version!r}; this kforge reads version {STATE_VERSION}")
    for name, types in {**FIELDS, **OPTIONAL}.items():
        if name not in data:
            if name in OPTIONAL:
                continue
            raise SearchError(f"{path}: field '{name}' is missing (a truncated or hand-edited state file)")
        value = data[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise SearchError(f"{path}: field '{name}' must be {' or '.join(t.__name__ for t in types)}, "
                              f"got {type(value).__name__}")


def _dtype_name(name: Any) -> str:
    if not isinstance(name, str) or not isinstance(getattr(torch, name, None), torch.dtype):
        raise ValueError(f"{name!r} is not a torch dtype's name")
    return name


def runs_dir():
    return paths.home() / "runs"


def state_path(run_id: str):
    return runs_dir() / f"{run_id}.json"


def new_run_id(op: str) -> str:
    return f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%dT%H%M%S')}-{op}-{secrets.token_hex(3)}"


def unfinished_runs(op: str | None = None) -> list[RunState]:
    """States of runs that stopped before finishing (newest last); unreadable files are skipped."""
    out = []
    for path in sorted(runs_dir().glob("*.json")) if runs_dir().is_dir() else []:
        try:
            state = RunState.from_json(read_json(path), path)
        except (OSError, ValueError, SearchError):
            continue
        if not state.status and (op is None or state.op == op):
            out.append(state)
    return out
