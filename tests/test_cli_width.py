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


@pytest.mark.parametrize("argv", [("table",), ("doctor",), ("misses",), ("attempts", "list"),
                                  ("tune", "topk_softmax", "--shape", "3x40", "--dtype", "fp32", "--device", "cpu",
                                   "--no-inductor", "--no-candidates")])
def test_a_command_fits_100_columns(capsys, monkeypatch, argv):
    monkeypatch.delenv("KFORGE_BUNDLED_TABLE")  # the shipped table: every op, two GPUs
    home = tempfile.mkdtemp(prefix="kf")  # a home as short as a user's (~/.local/share/kforge): paths fit
    monkeypatch.setenv("KFORGE_HOME", home)
    rc, out, err = run_main(capsys, *argv)
    assert rc == 0, err
    assert out.strip()
    shutil.rmtree(home, ignore_errors=True)
    assert too_wide(out) == [], "\n".join(too_wide(out))


def test_a_table_whose_keys_are_too_wide_puts_each_key_on_its_own_line(capsys):
    """rotary's keys (a four-dtype signature, six-dim problems) leave no room for the record columns:
    each key becomes a line above its records, the choice still marked on its record."""
    from kforge.router.table import ScoreTable
    from test_cli import record

    sig = "bfloat16,bfloat16,int64,float32"
    keys = [(16384, 32, 8, 128, 128, 1), (4, 16, 1, 64, 64, 0)]
    ScoreTable().write([record("rotary_embedding", k, impl, p50, dtypes=sig)
                        for k in keys for impl, p50 in (("vendor", 40.0), ("inductor", 7.5))])
    rc, out, err = run_main(capsys, "table", "--op", "rotary_embedding")
    assert rc == 0, err
    lines = out.splitlines()
    assert too_wide(out) == []
    for key in keys:
        at = lines.index(f"bf16,bf16,int64,fp32  {'x'.join(map(str, key))}")
        assert lines[at + 1].split()[:2] == ["->", "inductor"] and lines[at + 2].split()[0] == "vendor"
    rc, out, _ = run_main(capsys, "table", "--op", "rotary_embedding", "--device", "no such device")
    assert "empty for that filter" in out


def test_wrap_keeps_short_lines_and_never_splits_a_word():
    from kforge.cli._output import wrap

    run_id = "20261204T182046-rotary_embedding-4757d4"
    text = wrap("  kept  as it is\n" + "word " * 30 + run_id + " " + "x" * 120)
    lines = text.splitlines()
    assert lines[0] == "  kept  as it is"
    assert all(len(line) <= WIDTH for line in lines[1:-1]) and lines[-1] == "    " + "x" * 120
    assert run_id in text.split() and all(line.startswith("    ") for line in lines[2:])
    assert " ".join(text.split()) == " ".join(("  kept  as it is\n" + "word " * 30 + run_id + " " + "x" * 120).split())


def test_every_help_fits_100_columns(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    names = [a for a in build_parser()._subparsers._group_actions[0].choices]
    assert len(names) >= 8
    for argv in [("--help",), *((n, "--help") for n in names)]:
        rc, out, _ = run_main(capsys, *argv)
        assert rc == 0 and too_wide(out) == [], (argv, too_wide(out))
