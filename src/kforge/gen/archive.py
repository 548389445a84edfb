"""The attempts archive: every candidate `kforge generate` tried, whatever became of it.

One JSON file per attempt, `<home>/attempts/<op>/<id>.json`, written atomically: the prompt
(messages), the provider's answer, the extracted source, the verdict and its reason, the timings,
provider, model, tokens, and the lineage (parent attempt and source). Ids sort by time and are
unique across processes ("20261122T101530-3f9a1c"). `kforge attempts` reads it.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import re
import secrets
import types
import typing
import warnings
from pathlib import Path
from typing import Any

from kforge import paths
from kforge.errors import KforgeError
from kforge.files import atomic_write_json, read_json
from kforge.records import check_op_name

VERDICTS = ("accepted", "rejected", "error", "duplicate", "not run")
_ID = re.compile(r"[0-9]{8}T[0-9]{9}-[0-9a-f]{6}")  # Archive.new_id


class AttemptNotFound(KforgeError):
    """No attempt, or more than one, matches an id prefix."""


class ArchiveWarning(UserWarning):
    """An unreadable attempt file was skipped."""


@dataclasses.dataclass
class Attempt:
    id: str
    run_id: str
    op: str
    device: str  # device fingerprint string
    round: int
    variant: int
    parent: str | None  # the parent attempt's id
    parent_sha256: str | None
    provider: str
    model: str
    messages: list[dict]  # Message.to_json() of the prompt, corrective turns included
    response: str  # the provider's last answer
    source: str | None  # the extracted candidate source (None: no usable code)
    sha256: str | None
    verdict: str  # accepted | rejected | error | duplicate (of an attempt of the run) | not run (time budget)
    reason: str
    check: str | None
    case: str | None
    measurements: list[dict]  # harness Measurement.to_json() per timed key
    best_speedup: float | None  # geometric mean vs vendor over the measured keys
    usage: dict  # Usage.to_json()
    latency_s: float
    created: str  # ISO time, UTC

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"attempt {self.id}: verdict {self.verdict!r} is not one of {VERDICTS}")

    @property
    def accepted(self) -> bool:
        return self.verdict == "accepted"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> "Attempt":
        """The attempt `to_json` wrote; TypeError names a missing field or one of the wrong type
        (an attempt file is read back by `kforge attempts` and the search's lineage)."""
        if not isinstance(raw, dict):
            raise TypeError(f"an attempt is a JSON object, got {type(raw).__name__}")
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in raw:
                raise TypeError(f"attempt field {f.name!r} is missing")
            value, allowed = raw[f.name], _json_types(hints[f.name])
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                raise TypeError(f"attempt field {f.name!r} has the wrong type ({type(value).__name__})")
            values[f.name] = value
        return cls(**values)


def _json_types(hint) -> tuple[type, ...]:
    """The JSON value types a field annotation admits (`float | None` -> (float, int, NoneType))."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    out = tuple(typing.get_origin(a) or a for a in args)
    return out + (int,) if float in out else out


class Archive:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else paths.home() / "attempts"

    @staticmethod
    def new_id() -> str:
        now = _dt.datetime.now(_dt.timezone.utc)
        return f"{now.strftime('%Y%m%dT%H%M%S')}{now.microsecond // 1000:03d}-{secrets.token_hex(3)}"

    def path(self, attempt: Attempt) -> Path:
        """`<root>/<op>/<id>.json`: both names checked, so a path never leaves the archive."""
        if not isinstance(attempt.id, str) or not _ID.fullmatch(attempt.id):
            raise ValueError(f"attempt id {attempt.id!r} is not one Archive.new_id makes")
        return self.root / check_op_name(attempt.op) / f"{attempt.id}.json"

    def add(self, attempt: Attempt) -> Path:
        path = self.path(attempt)
        atomic_write_json(path, attempt.to_json())
        return path

    def _files(self, op: str | None = None):
        if not self.root.is_dir():
            return []
        folders = [self.root / check_op_name(op)] if op else sorted(p for p in self.root.iterdir() if p.is_dir())
        return sorted((f for d in folders if d.is_dir() for f in d.glob("*.json")), key=lambda f: f.stem)

    def _read(self, path: Path) -> Attempt | None:
        try:
            return Attempt.from_json(read_json(path))
        except (OSError, ValueError, TypeError) as exc:  # CorruptFile is a ValueError
            warnings.warn(f"kforge: skipped the unreadable attempt file {path}: {exc}", ArchiveWarning, stacklevel=3)
            return None

    def list(self, op: str | None = None) -> list[Attempt]:
        """Every readable attempt (of `op`), oldest first."""
        return [a for a in (self._read(f) for f in self._files(op)) if a is not None]

    def query(self, op: str | None = None, device: str | None = None, accepted: bool | None = None,
              run_id: str | None = None, provider: str | None = None) -> list[Attempt]:
        """Attempts matching every filter given; `device` matches a substring of the fingerprint."""
        out = []
        for a in self.list(op):
            if device is not None and device not in a.device:
                continue
            if accepted is not None and a.accepted != accepted:
                continue
            if run_id is not None and a.run_id != run_id:
                continue
            if provider is not None and a.provider != provider:
                continue
            out.append(a)
        return out

    def get(self, prefix: str) -> Attempt:
        """The attempt whose id is or starts with `prefix`."""
        matches = [f for f in self._files() if f.stem.startswith(prefix)]
        exact = [f for f in matches if f.stem == prefix]
        if exact:
            matches = exact
        if not matches:
            raise AttemptNotFound(f"no attempt id starts with {prefix!r} under {self.root}")
        if len(matches) > 1:
            shown = ", ".join(f.stem for f in matches[:5])
            more = ", ..." if len(matches) > 5 else ""
            raise AttemptNotFound(f"{len(matches)} attempts start with {prefix!r} ({shown}{more}); give more of the id")
        attempt = self._read(matches[0])
        if attempt is None:
            raise AttemptNotFound(f"attempt {matches[0].stem} is unreadable: {matches[0]}")
        return attempt
