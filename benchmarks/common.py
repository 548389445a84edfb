"""What every benchmark records next to its numbers: machine, versions, commit, command."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from kforge.device import cpu_name, installed_version

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def environment() -> dict:
    # KFORGE_COMMIT first: the device tool's copy of the tree carries a stale .git (on 2026-11-30 it
    # named the previous session's last commit), or none.
    commit = os.environ.get("KFORGE_COMMIT")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            commit = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "kforge_commit": commit,
        # On the device the .git is stale: the digest is the check of KFORGE_COMMIT's claim.
        **(tree_state() if not os.environ.get("KFORGE_COMMIT") else {"src_sha256": source_digest()}),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": installed_version("triton"),
        "cpu": cpu_name(),
        "gpu": gpu,
        "host": platform.node(),
    }


def source_digest(root: Path = ROOT / "src" / "kforge") -> str:
    """sha256 over the package's files (paths and bytes, sorted; caches left out): the code that
    ran, checkable against any commit by running this on its tree, with or without a .git."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def tree_state(root: Path = ROOT) -> dict:
    """`src_sha256` always; where git can say: `tree` "clean" or "dirty", and a dirty tree's
    `diff_sha256` (of `git diff HEAD` and the untracked files' names) so the run names what it ran."""
    state = {"src_sha256": source_digest(root / "src" / "kforge")}
    try:
        diff = subprocess.run(["git", "diff", "HEAD"], capture_output=True, cwd=root, timeout=30, check=True).stdout
        untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], capture_output=True,
                                   cwd=root, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return state
    state["tree"] = "dirty" if diff or untracked else "clean"
    if diff or untracked:
        state["diff_sha256"] = hashlib.sha256(diff + b"\0" + untracked).hexdigest()
    return state


def write_json(name: str, payload: dict, subdir: str | None = None) -> Path:
    folder = RESULTS / subdir if subdir else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return path
