"""The attempts archive: every candidate `kforge generate` tried, whatever became of it.

One JSON file per attempt, `<home>/attempts/<op>/<id>.json`, written atomically: the prompt
(messages), the provider's answer, the extracted source, the verdict and its reason, the timings,
provider, model, tokens, and the lineage (parent attempt and source). Ids sort by time and are
unique across processes ("20261122T101530-3f9a1c"). `kforge attempts` reads it.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import secrets
import warnings
from pathlib import Path
from typing import Any

from kforge import paths
from kforge.errors import KforgeError
from kforge.files import atomic_write_json

VERDICTS = ("accepted", "rejected", "error")


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
    verdict: str  # accepted | rejected | error
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
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


class Archive:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else paths.home() / "attempts"

    @staticmethod
    def new_id() -> str:
        now = _dt.datetime.now(_dt.timezone.utc)
        return f"{now.strftime('%Y%m%dT%H%M%S')}{now.microsecond // 1000:03d}-{secrets.token_hex(3)}"

    def path(self, attempt: Attempt) -> Path:
        return self.root / attempt.op / f"{attempt.id}.json"

    def add(self, attempt: Attempt) -> Path:
        path = self.path(attempt)
        atomic_write_json(path, attempt.to_json())
        return path

    def _files(self, op: str | None = None):
        if not self.root.is_dir():
            return []
        folders = [self.root / op] if op else sorted(p for p in self.root.iterdir() if p.is_dir())
        return sorted((f for d in folders if d.is_dir() for f in d.glob("*.json")), key=lambda f: f.stem)

    def _read(self, path: Path) -> Attempt | None:
        try:
            return Attempt.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
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
            raise AttemptNotFound(f"{len(matches)} attempts start with {prefix!r} ({shown}{', ...' if len(matches) > 5 else ''}); "
                                  "give more of the id")
        attempt = self._read(matches[0])
        if attempt is None:
            raise AttemptNotFound(f"attempt {matches[0].stem} is unreadable: {matches[0]}")
        return attempt
