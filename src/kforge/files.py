"""Crash-safe files shared between processes (table, miss log, kernel store, ceilings): lock, write a temp file, fsync, replace.

Readers never see half a file: `os.replace` is atomic, and a writer killed at any point leaves
either the old file or the new one (plus, at worst, a stray temp file that readers ignore).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

LOCK_TIMEOUT_S = 120
# The largest JSON file kforge reads (table shards, the miss log, attempts, manifests, kernel
# metadata). Its own largest: a shard of a few thousand records, a few MB.
MAX_JSON_BYTES = 64 << 20


class CorruptFile(ValueError):
    """A file that is not what kforge writes there: too large, not UTF-8 JSON, or nested too deeply."""


def loads_json(text: str | bytes, source: str, *, max_bytes: int | None = None) -> Any:
    """JSON of `text` from `source` (a path, for messages). Raises CorruptFile for anything that
    is not JSON kforge could have written: over `max_bytes`, undecodable, not JSON, or nested past
    the interpreter's recursion limit (json raises RecursionError there, which no caller expects)."""
    max_bytes = MAX_JSON_BYTES if max_bytes is None else max_bytes
    if len(text) > max_bytes:
        raise CorruptFile(f"{source}: larger than {max_bytes} bytes")
    try:
        return json.loads(text)
    except RecursionError:
        raise CorruptFile(f"{source}: nested too deeply to be a kforge file") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise CorruptFile(f"{source}: not valid JSON ({str(exc)[:200]})") from None


def read_json(path: Path, *, max_bytes: int | None = None) -> Any:
    """The JSON data of the file `path`, read at most `max_bytes` (+1 to see that it is larger).
    Raises OSError when the file cannot be read, CorruptFile when its content is not usable JSON."""
    max_bytes = MAX_JSON_BYTES if max_bytes is None else max_bytes
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    return loads_json(data, str(path), max_bytes=max_bytes)


def lock_for(path: Path) -> FileLock:
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S)


def atomic_write_json(path: Path, payload: dict) -> None:
    """Write `payload` to `path` atomically and durably. Call with the path's lock held."""
    atomic_write_bytes(path, (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: temp file in the same directory, fsync, os.replace, fsync dir."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or link in `directory` durable (where the platform has directory fds)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_aside(path: Path, why: str) -> Path:
    """Rename a file kforge cannot use so nothing is lost and the next write starts clean."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.{why}-{stamp}-{os.getpid()}")
    os.replace(path, aside)
    return aside


def file_state(path: Path) -> tuple[int, int, int] | None:
    """(mtime_ns, size, inode) of a file, None when absent: what tells a reader it changed."""
    try:
        st = os.stat(path)
    except OSError:  # absent, or a path through a file / without permission: nothing to read
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
