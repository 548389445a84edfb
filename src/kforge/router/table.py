"""The persisted score table: layers of versioned JSON shards, read lazily, written safely.

Layers, later wins for the same (key, implementation):
  1. bundled: `kforge/tables/<device slug>/<op>.json` inside the package (read-only);
  2. user: `<KFORGE_HOME or platformdirs user data dir>/table/<device slug>/<op>.json`;
  3. extra: the one file named by `KFORGE_TABLE` (records of any device and op).
Shards are per (device fingerprint, op), so a process reads only the records of the ops it calls
on the device it has. A shard is `{"schema_version": 1, "kind": "kforge-score-table", "device",
"op", "records": [...]}`.

A corrupt file (not JSON, wrong structure, over `files.MAX_JSON_BYTES`, nested deeper than the
interpreter's recursion limit) in a writable layer is moved aside (`<name>.corrupt-*`)
with one warning; a file of another schema version is ignored with one warning and moved aside
only when kforge next writes that shard, so a newer kforge sharing the directory loses nothing
until then. Either way routing carries on with the remaining layers, vendor at worst.
"""
from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path
from typing import Iterable, Iterator

from kforge import paths
from kforge.device import slug
from kforge.errors import TableError
from kforge.records import READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION, Evidence, Record, check_op_name
from kforge.files import MAX_JSON_BYTES, CorruptFile, atomic_write_json, file_state, loads_json, lock_for, move_aside

KIND = "kforge-score-table"


def _read_bytes(path: Path) -> bytes:
    """A table file's bytes, MAX_JSON_BYTES at most (+1: parse_table then calls it corrupt)."""
    with open(path, "rb") as f:
        return f.read(MAX_JSON_BYTES + 1)


class TableWarning(UserWarning):
    """A table file was set aside or ignored; routing carries on without it."""


def parse_table(text: str | bytes, source: str, *, strict: bool = False) -> tuple[list[Record], int]:
    """Records in a table file's text, and how many invalid records were skipped.

    Raises TableError for a file that is not a kforge table of this schema version: not JSON, larger
    than MAX_JSON_BYTES, nested too deeply, or of the wrong structure. `strict`: an invalid record
    is a TableError too, naming every such record (by index and op) and its first wrong field."""
    try:
        data = loads_json(text, source)
    except CorruptFile as exc:
        raise TableError(str(exc)) from None
    if not isinstance(data, dict) or data.get("kind", KIND) != KIND or not isinstance(data.get("records"), list):
        raise TableError(f"{source}: not a kforge score table")
    version = data.get("schema_version")
    if version not in READABLE_SCHEMA_VERSIONS or isinstance(version, bool):
        raise ForeignVersion(f"{source}: schema_version {version!r:.40}, this kforge reads "
                             f"{' and '.join(map(str, READABLE_SCHEMA_VERSIONS))}")
    pool = data.get("evidence_pool", [])
    if not isinstance(pool, list):
        raise TableError(f"{source}: evidence_pool must be a list")
    records, invalid, parsed = [], [], {}
    for index, raw in enumerate(data["records"]):
        try:
            records.append(Record.from_json(raw, _pooled(raw, pool, parsed)))
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            invalid.append((index, raw, exc))
    if strict and invalid:
        shown = [f"record {i}{_op_of(raw)}: {exc}" for i, raw, exc in invalid[:10]]
        more = f"; and {len(invalid) - 10} more" if len(invalid) > 10 else ""
        raise TableError(f"{source}: {len(invalid)} invalid record(s): " + "; ".join(shown) + more)
    return records, len(invalid)


def _pooled(raw, pool: list, parsed: dict) -> Evidence | None:
    """The evidence of the pool entry `raw` names (shard_payload), checked once per file for all the
    records naming it (a gemv seed's 288 shapes, checked per record, took 0.7 s for the shard);
    None for a record with its own evidence inline."""
    ref = raw.get("evidence") if isinstance(raw, dict) else None
    if not isinstance(ref, int) or isinstance(ref, bool):
        return None
    if not 0 <= ref < len(pool):
        raise ValueError(f"evidence: names entry {ref} of an evidence_pool of {len(pool)}")
    if ref not in parsed:
        try:
            parsed[ref] = Evidence.from_json(pool[ref])
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            parsed[ref] = exc
    if isinstance(parsed[ref], Exception):
        raise parsed[ref]
    return parsed[ref]


def _op_of(raw) -> str:
    op = raw.get("op") if isinstance(raw, dict) else None
    return f" (op {op[:40]!r})" if isinstance(op, str) else ""


class ForeignVersion(TableError):
    """A table of another schema version: not trusted, not destroyed."""


def shard_payload(device: str | None, op: str | None, records: Iterable[Record]) -> dict:
    """A table file's JSON. Each distinct evidence is written once, in "evidence_pool", and a record
    names its entry by index: every record of one evaluation carries the same evidence (a gemv
    seed's lists 288 shapes), which inline made the H200 gemv shard 6.3 MB and slow to read.
    parse_table reads both forms."""
    ordered = sorted(records, key=lambda r: (r.key.op, r.key.device, r.key.dtypes, r.key.shape, r.impl))
    pool, index, rows = [], {}, []
    for r in ordered:
        row = r.to_json()
        text = json.dumps(row["evidence"], sort_keys=True)
        if text not in index:
            index[text] = len(pool)
            pool.append(row["evidence"])
        row["evidence"] = index[text]
        rows.append(row)
    payload = {"schema_version": SCHEMA_VERSION, "kind": KIND, "evidence_pool": pool, "records": rows}
    if device is not None:
        payload["device"] = device
    if op is not None:
        payload["op"] = op
    return payload


class Layer:
    """One source of records: a directory of shards, or one file holding any records."""

    def __init__(self, name: str, root: Path, *, single_file: bool, writable: bool):
        self.name = name
        self.root = root
        self.single_file = single_file
        self.writable = writable

    def path(self, device: str, op: str) -> Path:
        """The shard of (device, op). The op must be a valid op name (RecordError otherwise): it
        becomes a file name, and `../x` or `/etc/x` must never reach one."""
        check_op_name(op)
        return self.root if self.single_file else self.root / slug(device) / f"{op}.json"

    def files(self) -> list[Path]:
        if self.single_file:
            return [self.root] if self.root.is_file() else []
        return sorted(self.root.glob("*/*.json")) if self.root.is_dir() else []

    def __repr__(self) -> str:
        return f"Layer({self.name}, {self.root})"


def default_layers() -> list[Layer]:
    bundled = paths.bundled_table_dir()
    layers = [Layer("bundled", bundled, single_file=False, writable=False)] if bundled is not None else []
    layers.append(Layer("user", paths.user_table_dir(), single_file=False, writable=True))
    extra = paths.extra_table_file()
    if extra is not None:
        layers.append(Layer("extra", extra, single_file=True, writable=False))
    return layers


class ScoreTable:
    """Records by (device, op), merged across layers; re-read when a file changes."""

    def __init__(self, layers: list[Layer] | None = None):
        self._layers = layers
        self._lock = threading.RLock()
        self._cache: dict[tuple[str, str], list[Record]] = {}
        self._files: dict[Path, tuple | None] = {}  # file -> state when last read
        self._parsed: dict[Path, tuple[tuple | None, list[Record]]] = {}
        self._warned: set[tuple[Path, tuple | None]] = set()

    @property
    def layers(self) -> list[Layer]:
        if self._layers is None:  # resolved on first use, never at import
            self._layers = default_layers()
        return self._layers

    # -- reading -------------------------------------------------------------------------------
    def records(self, device: str, op: str) -> list[Record]:
        """Every trusted record for (device, op); later layers replace earlier ones."""
        with self._lock:
            cached = self._cache.get((device, op))
            if cached is not None:
                return cached
            merged: dict = {}
            for layer in self.layers:
                for record in self._read(layer, layer.path(device, op)):
                    if record.key.device == device and record.key.op == op:
                        merged[record.ident] = record
            result = list(merged.values())
            self._cache[(device, op)] = result
            return result

    def all_records(self) -> Iterator[tuple[Layer, Record]]:
        """Every trusted record of every layer, with its layer (for `kforge table`)."""
        for layer in self.layers:
            for path in layer.files():
                for record in self._read(layer, path):
                    yield layer, record

    def changed(self) -> bool:
        """True (and caches dropped) when any file read so far changed, appeared or vanished."""
        with self._lock:
            if not any(file_state(p) != state for p, state in self._files.items()):
                return False
            self._cache.clear()
            self._files.clear()
            return True

    def _read(self, layer: Layer, path: Path) -> list[Record]:
        state = file_state(path)
        self._files[path] = state
        if state is None:
            return []
        hit = self._parsed.get(path)
        if hit is not None and hit[0] == state:
            return hit[1]
        try:
            records, skipped = parse_table(_read_bytes(path), str(path))
        except ForeignVersion as exc:
            self._warn(path, state, f"kforge: ignoring score table {exc}; routing continues without it")
            records = []
        except (TableError, OSError, UnicodeDecodeError) as exc:
            records = []
            if layer.writable:
                self._set_aside(path, str(exc))
            else:
                self._warn(path, state, f"kforge: ignoring unreadable score table {path}: {exc}")
        else:
            if skipped:
                self._warn(path, state, f"kforge: {path}: skipped {skipped} invalid record(s)")
        self._parsed[path] = (state, records)
        return records

    def _set_aside(self, path: Path, reason: str) -> None:
        try:
            self._move_corrupt(path, reason)
        except OSError as exc:  # read-only mount, permissions: leave it, serve from other layers
            self._warn(path, file_state(path), f"kforge: score table {path} is corrupt ({reason}) and could not "
                                                f"be moved aside ({exc}); ignoring it")

    def _move_corrupt(self, path: Path, reason: str) -> None:
        with lock_for(path):
            state = file_state(path)
            if state is None:
                return  # another process already set it aside
            try:
                parse_table(_read_bytes(path), str(path))
                return  # repaired meanwhile by a writer
            except ForeignVersion:
                return
            except (TableError, OSError, UnicodeDecodeError):
                aside = move_aside(path, "corrupt")
        self._warn(path, state, f"kforge: score table {path} is corrupt ({reason}); moved it to {aside.name}; "
                                "its ops are served by the remaining layers (vendor at worst) until it is rebuilt")

    def _warn(self, path: Path, state, message: str) -> None:
        if (path, state) not in self._warned:
            self._warned.add((path, state))
            warnings.warn(message, TableWarning, stacklevel=4)

    # -- writing -------------------------------------------------------------------------------
    def writable_layer(self) -> Layer:
        for layer in reversed(self.layers):
            if layer.writable:
                return layer
        raise TableError("no writable score-table layer")

    def write(self, records: Iterable[Record], layer: Layer | None = None) -> list[Path]:
        """Merge `records` into their shards of `layer` (the user table by default): one record per
        (key, implementation), the one with the newest timestamp wins. Safe against concurrent writers and crashes."""
        layer = layer or self.writable_layer()
        groups: dict[tuple[str, str], list[Record]] = {}
        for record in records:
            groups.setdefault((record.key.device, record.key.op), []).append(record)
        shards = {group: layer.path(*group) for group in groups}  # every op name checked before any write
        written = []
        for (device, op), group in groups.items():
            path = shards[(device, op)]
            with lock_for(path):
                merged = {r.ident: r for r in self._existing_for_write(path)}
                for r in group:  # the newest measurement wins, whatever order files arrive in
                    old = merged.get(r.ident)
                    if old is None or r.timestamp >= old.timestamp:
                        merged[r.ident] = r
                atomic_write_json(path, shard_payload(None if layer.single_file else device,
                                                      None if layer.single_file else op, merged.values()))
            written.append(path)
        with self._lock:
            self._cache.clear()
        return written

    def _existing_for_write(self, path: Path) -> list[Record]:
        if file_state(path) is None:
            return []
        try:
            records, _ = parse_table(_read_bytes(path), str(path))
            return records
        except ForeignVersion as exc:
            aside = move_aside(path, "foreign")
            warnings.warn(f"kforge: {exc}; moved it to {aside.name} before writing", TableWarning, stacklevel=3)
        except (TableError, OSError, UnicodeDecodeError) as exc:
            aside = move_aside(path, "corrupt")
            warnings.warn(f"kforge: {exc}; moved it to {aside.name} before writing", TableWarning, stacklevel=3)
        return []
