"""Crash-safe JSON files shared between processes: lock, write a temp file, fsync, replace.

Readers never see half a file: `os.replace` is atomic, and a writer killed at any point leaves
either the old file or the new one (plus, at worst, a stray temp file that readers ignore).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from filelock import FileLock

LOCK_TIMEOUT_S = 120


def lock_for(path: Path) -> FileLock:
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S)


def atomic_write_json(path: Path, payload: dict) -> None:
    """Write `payload` to `path` atomically and durably. Call with the path's lock held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
