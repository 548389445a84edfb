"""The miss log: per-key counts of calls served by vendor because the table had nothing usable.

Counting is one integer increment on the call's cached decision; the router hands the counts
over here when it flushes (at exit, on `kforge.flush()`, and at most every `FLUSH_INTERVAL_S`
seconds from its periodic check), so the hot path never touches the disk. The log lives at
`<home>/misses/<device slug>.json`; entries accumulate across processes.

Calls made under `uncounted()` (kforge's own timing loops: demo, calibrate, tune, generate) are
served and shown in `kforge.stats()` but never reach the log: a miss is a call a user made.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as _dt
import threading
import warnings
from typing import Callable, Iterator
from pathlib import Path

from kforge import paths
from kforge.device import slug
from kforge.records import CallInfo, DispatchKey, Record, op_name_problem
from kforge.files import atomic_write_json, file_state, lock_for, move_aside, read_json
from kforge.router.policy import rank
from kforge.specs import OpSpec

FLUSH_INTERVAL_S = 30.0
KIND = "kforge-miss-log"
VERSION = 1


# A ContextVar, not a global: each thread starts with its own (unset) value, and each asyncio task
# with a copy of its creator's, so one thread's or task's timing loop never hides another's misses.
_UNCOUNTED: contextvars.ContextVar[bool] = contextvars.ContextVar("kforge_uncounted", default=False)
uncounted_active = _UNCOUNTED.get  # read by the router on the miss path only, never on a hit


# How many `uncounted()` blocks are open in any thread or task, and who hears when that count
# leaves or returns to zero: the router wraps its logged decisions' functions with the check of
# `uncounted_active` only while some block is open, so a miss outside them pays nothing for it.
_OPEN = [0]
_OPEN_LOCK = threading.Lock()
quiet_listeners: list[Callable[[bool], None]] = []


def quiet_anywhere() -> bool:
    return _OPEN[0] > 0


def _opened(delta: int) -> None:
    with _OPEN_LOCK:
        _OPEN[0] += delta
        if _OPEN[0] == (1 if delta > 0 else 0):
            for listener in quiet_listeners:
                listener(delta > 0)


@contextlib.contextmanager
def uncounted() -> Iterator[None]:
    """Routed calls in this block (this thread, this task) that miss the table are served as
    usual and counted in `kforge.stats()`, but are not written to the miss log. Nests."""
    _opened(1)  # before the flag: a call in the block must find the checking functions in place
    token = _UNCOUNTED.set(True)
    try:
        yield
    finally:
        _UNCOUNTED.reset(token)
        _opened(-1)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def log_path(device: str) -> Path:
    return paths.misses_dir() / f"{slug(device)}.json"


def _entries(data) -> list[dict]:
    """The entries of a miss log's JSON data; ValueError for anything kforge did not write (a log
    is summed into and listed: a wrong type must not crash a flush at exit or `kforge misses`)."""
    if not isinstance(data, dict) or data.get("kind") != KIND or data.get("version") != VERSION:
        raise ValueError("not a kforge miss log of this version")
    entries = data.get("entries")
    if not isinstance(entries, list):
        raise ValueError("entries is not a list")
    for e in entries:
        if not (isinstance(e, dict) and op_name_problem(e.get("op")) is None and isinstance(e.get("dtypes"), str)
                and isinstance(e.get("shape"), list) and all(_count(d) for d in e["shape"])
                and _count(e.get("misses")) and _count(e.get("fallbacks")) and _layouts_ok(e.get("layouts", []))):
            raise ValueError(f"an entry is not a miss-log entry: {str(e)[:80]}")
    return entries


def _layouts_ok(layouts) -> bool:
    return isinstance(layouts, list) and all(
        isinstance(x, dict) and set(x) == {"contiguous", "aligned"} and isinstance(x["contiguous"], bool)
        and x["aligned"] in (1, 2, 4, 8, 16) and not isinstance(x["aligned"], bool) for x in layouts)


Layout = tuple[bool, int]  # (contiguous, alignment in bytes) of a call's tensors


def layout_blamed(spec: OpSpec, records: list[Record], call: CallInfo, disabled=frozenset()) -> Layout | None:
    """The call's layout when it is what kept the table's records from serving it (the same call,
    contiguous and 16-byte aligned, would be served), else None. Cold path: fallbacks only."""
    if call.contiguous and call.aligned >= 16:
        return None
    plain = dataclasses.replace(call, contiguous=True, aligned=16)
    return (call.contiguous, call.aligned) if rank(spec, records, plain, disabled).eligible else None


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _load(path: Path) -> dict:
    if file_state(path) is None:
        return {}
    try:
        return {(e["op"], e["dtypes"], tuple(e["shape"])): e for e in _entries(read_json(path))}
    except (ValueError, OSError) as exc:  # CorruptFile is a ValueError
        try:
            aside = move_aside(path, "corrupt")
        except OSError:
            return {}
        warnings.warn(f"kforge: miss log {path} is unreadable ({exc}); moved it to {aside.name} and started afresh",
                      stacklevel=3)
        return {}


def merge(counts: dict[DispatchKey, tuple[int, int]], layouts: dict[DispatchKey, set[Layout]] | None = None) -> list[Path]:
    """Add `counts` ({key: (misses, fallbacks)}) to the on-disk logs of their devices; `layouts`:
    per key, the call layouts that made it fall back (`layout_blamed`), kept in the entry."""
    layouts = layouts or {}
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
                if layouts.get(key):
                    seen = {(x["contiguous"], x["aligned"]) for x in entry.get("layouts", [])} | layouts[key]
                    entry["layouts"] = [{"contiguous": c, "aligned": a} for c, a in sorted(seen)]
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
            data = read_json(path)
            entries = _entries(data)
        except (ValueError, OSError):  # set aside by the next flush to that device's log
            continue
        device = data.get("device")
        for entry in entries:
            out.append({**entry, "device": device if isinstance(device, str) else "?"})
    out.sort(key=lambda e: -(e["misses"] + e["fallbacks"]))
    return out


def served(entry: dict, spec: OpSpec, records: list[Record]) -> bool:
    """Whether `records` (the table's, for the entry's device and op) now serve the entry's key:
    a contiguous, aligned call of it, and every layout the entry says made it fall back, would be
    routed to a record. Ranked as on the entry's own device (`rank(here=False)`)."""
    key = DispatchKey(entry["op"], entry["device"], entry["dtypes"], tuple(entry["shape"]))
    layouts = [(x["contiguous"], x["aligned"]) for x in entry.get("layouts", [])]
    return all(rank(spec, records, CallInfo(key, contiguous, aligned, False), here=False).eligible
               for contiguous, aligned in [(True, 16)] + layouts)


def annotate(entries: list[dict], spec_of: Callable[[str], OpSpec | None], table=None) -> list[dict]:
    """`entries` (from `read_all`), each with `now_served`: True when the current table routes its
    key to a record (`served`). `spec_of(op)`: the op's spec, None for an op this process cannot
    load (its entries stay outstanding). `table`: a `ScoreTable` (default: the layered one)."""
    if table is None:
        from kforge.router.table import ScoreTable

        table = ScoreTable()
    shards: dict[tuple[str, str], list[Record]] = {}
    out = []
    for entry in entries:
        spec = spec_of(entry["op"])
        now = False
        if spec is not None:
            where = (entry["device"], entry["op"])
            if where not in shards:
                try:
                    shards[where] = table.records(*where)
                except Exception:  # an unreadable table serves nothing: the entry stays outstanding
                    shards[where] = []
            now = served(entry, spec, shards[where])
        out.append({**entry, "now_served": now})
    return out


def outstanding(entries: list[dict], spec_of: Callable[[str], OpSpec | None], table=None) -> list[dict]:
    """The entries whose keys the current table still does not serve (see `annotate`): what
    `kforge misses`, `generate --from-misses` and `tune --from-misses` work on. Entries keep their
    order and fields (without `now_served`)."""
    return [{k: v for k, v in e.items() if k != "now_served"}
            for e in annotate(entries, spec_of, table) if not e["now_served"]]
