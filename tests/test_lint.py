"""The linter over the tree: `ruff check` with pyproject.toml's [tool.ruff] (pyflakes and pycodestyle
rules). `bash scripts/setup.sh --test` installs the pinned ruff (the `test` extra)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    assert importlib.util.find_spec("ruff") is not None, \
        "ruff is not installed here: `bash scripts/setup.sh --test` installs it (pyproject.toml's test extra)"
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"ruff check found problems (fix them, or `ruff check --fix`):\n{run.stdout}{run.stderr}"
