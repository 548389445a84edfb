"""Text output fits a 100-column terminal: the tables and reports of the commands a user runs
first, with the bundled table (many keys, long kernel ids, shapes of six dims), and every --help."""
from __future__ import annotations

import shutil
import tempfile

import pytest

from kforge.cli._output import WIDTH
from kforge.cli.main import build_parser
from test_cli import run_main


def too_wide(text: str) -> list[str]:
    return [line for line in text.splitlines() if len(line) > WIDTH]


@pytest.mark.parametrize("argv", [("table",), ("doctor",), ("misses",), ("attempts", "list")])
def test_a_command_fits_100_columns(capsys, monkeypatch, argv):
    monkeypatch.delenv("KFORGE_BUNDLED_TABLE")  # the shipped table: every op, two GPUs
    home = tempfile.mkdtemp(prefix="kf")  # a home as short as a user's (~/.local/share/kforge): paths fit
    monkeypatch.setenv("KFORGE_HOME", home)
    rc, out, err = run_main(capsys, *argv)
    assert rc == 0, err
    assert out.strip()
    shutil.rmtree(home, ignore_errors=True)
    assert too_wide(out) == [], "\n".join(too_wide(out))


def test_every_help_fits_100_columns(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    names = [a for a in build_parser()._subparsers._group_actions[0].choices]
    assert len(names) >= 8
    for argv in [("--help",), *((n, "--help") for n in names)]:
        rc, out, _ = run_main(capsys, *argv)
        assert rc == 0 and too_wide(out) == [], (argv, too_wide(out))
