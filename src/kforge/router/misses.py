"""The miss log: per-key counts of calls served by vendor because the table had nothing usable.

Counting is one integer increment on the call's cached decision; the router hands the counts
over here when it flushes (at exit, on `kforge.flush()`, and at most every `FLUSH_INTERVAL_S`
seconds from its periodic check), so the hot path never touches the disk. The log lives at
`<home>/misses/<device slug>.json`; entries accumulate across processes.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from kforge import paths
from kforge.device import slug
from kforge.records import DispatchKey
from kforge.files import atomic_write_json, file_state, lock_for, move_aside

FLUSH_INTERVAL_S = 30.0
KIND = "kforge-miss-log"
VERSION = 1


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def log_path(device: str) -> Path:
    return paths.misses_dir() / f"{slug(device)}.json"


def _load(path: Path) -> dict:
    if file_state(path) is None:
        return {}
    try:
        data = json.loads(path.read_text())
        if data.get("kind") != KIND or data.get("version") != VERSION:
            raise ValueError("not a kforge miss log of this version")
        return {(e["op"], e["dtypes"], tuple(e["shape"])): e for e in data["entries"]}
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        move_aside(path, "corrupt")
        return {}


def merge(counts: dict[DispatchKey, tuple[int, int]]) -> list[Path]:
    """Add `counts` ({key: (misses, fallbacks)}) to the on-disk logs of their devices."""
    by_device: dict[str, dict] = {}
    for key, value in counts.items():
        by_device.setdefault(key.device, {})[key] = value
    written = []
    for device, group in by_device.items():
        path = log_path(device)
        with lock_for(path):
            entries = _load(path)
            now = _now()
            for key, (misses, fallbacks) in group.items():
                entry = entries.setdefault((key.op, key.dtypes, key.shape), {
                    "op": key.op, "dtypes": key.dtypes, "shape": list(key.shape),
                    "misses": 0, "fallbacks": 0, "first_seen": now})
                entry["misses"] += misses
                entry["fallbacks"] += fallbacks
                entry["last_seen"] = now
            atomic_write_json(path, {"kind": KIND, "version": VERSION, "device": device,
                                     "entries": sorted(entries.values(), key=lambda e: -(e["misses"] + e["fallbacks"]))})
        written.append(path)
    return written


def read_all() -> list[dict]:
    """Every logged entry of every device, most called first, each with its `device`."""
    out = []
    root = paths.misses_dir()
    for path in sorted(root.glob("*.json")) if root.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (ValueError, OSError):
            continue
        if not isinstance(data, dict) or data.get("kind") != KIND:
            continue
        for entry in data.get("entries", []):
            out.append({**entry, "device": data.get("device", "?")})
    out.sort(key=lambda e: -(e["misses"] + e["fallbacks"]))
    return out
