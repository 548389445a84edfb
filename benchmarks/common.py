"""What every benchmark records next to its numbers: machine, versions, commit, command."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from kforge.device import cpu_name, installed_version

RESULTS = Path(__file__).resolve().parent / "results"


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
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": installed_version("triton"),
        "cpu": cpu_name(),
        "gpu": gpu,
        "host": platform.node(),
    }


def write_json(name: str, payload: dict, subdir: str | None = None) -> Path:
    folder = RESULTS / subdir if subdir else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return path
