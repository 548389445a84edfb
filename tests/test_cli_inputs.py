"""Bad command-line input is an error naming the flag or the op, never a traceback or a silent
empty answer; persisted user ops are known to the commands and APIs that take an op name."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

import kforge
import user_op_defs
from kforge.cli.main import build_parser
from test_cli import run_main
from test_user_ops import run_elsewhere


@pytest.mark.parametrize("command", [("demo", "--quick", "--no-generate"), ("bench", "softmax"),
                                     ("generate", "softmax", "--provider", "catalog")])
@pytest.mark.parametrize("device, message", [
    ("tpu", "--device 'tpu': use cpu, cuda or cuda:N"),
    ("cuda:abc", "--device 'cuda:abc': use cpu, cuda or cuda:N"),
    ("meta", "--device 'meta': kforge runs on cpu or cuda"),
])
def test_a_bad_device_names_the_flag(capsys, command, device, message):
    rc, out, err = run_main(capsys, *command, "--device", device)
    assert rc == 1 and message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_on_a_machine_without_it_says_why_and_what_to_do(capsys):
    rc, out, err = run_main(capsys, "demo", "--device", "cuda", "--quick")
    assert rc == 1 and "--device cuda:" in err and "use --device cpu" in err and "Traceback" not in err


def test_table_with_an_unknown_op_names_it_and_the_known_ones(capsys):
    rc, out, err = run_main(capsys, "table", "--op", "rms_nrom")
    assert rc == 1 and "unknown op 'rms_nrom'" in err and "rms_norm" in err
    assert "empty" not in out


def test_a_persisted_user_op_is_known_to_table_and_use(kforge_home):
    name = "persisted_for_use"
    kforge.define_op(name, "(Tensor x, float scale) -> Tensor", user_op_defs.reference, user_op_defs.make_inputs,
                     shapes=[(8, 32)])
    out = run_elsewhere(  # another process: persisted, not registered until its name is used
        "import torch, kforge\n"
        "from kforge.cli.main import main\n"
        f"with kforge.use({name!r}, 'vendor'):\n"
        f"    print(kforge.ops.{name}(torch.full((2,), 2.0), 0.5).tolist())\n"
        f"print(kforge.stats()['ops'][{name!r}]['by_impl'])\n"
        f"print('rc', main(['table', '--op', {name!r}]))\n"
        "try:\n"
        "    kforge.use('persisted_fro_use', 'vendor')\n"
        "except kforge.errors.UnknownNameError as exc:\n"
        "    print('refused', exc)\n", kforge_home)
    lines = out.strip().splitlines()
    assert lines[0] == "[1.0, 1.0]" and lines[1] == "{'vendor': 1}"
    assert "rc 0" in lines and "unknown op" not in out.split("refused")[0]
    assert "refused" in out and "persisted_fro_use" in out and name in out.split("refused")[1]


def test_issue_run_help_explains_every_option(capsys):
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    issue = next(a for a in commands.choices["issue"]._actions if isinstance(a, argparse._SubParsersAction))
    undocumented = [a.option_strings[0] for a in issue.choices["run"]._actions if a.option_strings and not a.help]
    assert undocumented == [], undocumented
    rc, out, _ = run_main(capsys, "--help")
    assert "parse (and validate)" not in out and "publish" in out


def test_a_missing_key_is_reported_before_a_spec_file_defines_anything(capsys, kforge_home, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    spec_file = Path(__file__).parent / "kernelbench" / "rms_rows_fixed.py"
    rc, out, err = run_main(capsys, "generate", "--spec-file", str(spec_file), "--provider", "anthropic",
                            "--device", "cpu")
    assert rc == 1 and "ANTHROPIC_API_KEY" in err
    assert not (kforge_home / "ops").exists()  # nothing defined, nothing persisted


@pytest.mark.parametrize("stem, message", [("3-bad-name", "is not an op name"), ("softmax", "is a built-in op")])
def test_a_spec_file_whose_name_cannot_be_the_op_asks_for_one(capsys, kforge_home, tmp_path, stem, message):
    spec_file = tmp_path / f"{stem}.py"
    spec_file.write_text((Path(__file__).parent / "kernelbench" / "rms_rows_fixed.py").read_text())
    rc, out, err = run_main(capsys, "generate", "--spec-file", str(spec_file), "--provider", "catalog",
                            "--device", "cpu")
    assert rc == 1 and message in err and "kforge generate NAME --spec-file FILE" in err
    assert not (kforge_home / "ops").exists()


def test_table_shows_what_another_machines_gpu_routes_to(capsys, monkeypatch):
    monkeypatch.delenv("KFORGE_BUNDLED_TABLE")  # the shipped H100/H200 records
    rc, out, err = run_main(capsys, "table", "--op", "rms_norm", "--json")
    rows = [r for r in json.loads(out)["keys"] if "H100" in r["device"]]
    assert rows and not any(r["runnable_here"] for r in rows) or torch.cuda.is_available()
    # Triton cannot run here (no GPU), yet the GPU's own choice is shown: a kernel wins some keys.
    assert any(r["chosen"].startswith("triton:") for r in rows), [r["chosen"] for r in rows]
    assert all(r["chosen"] in {x["impl"] for x in r["records"]} | {"vendor"} for r in rows)
    assert not any("no CUDA GPU" in why for r in rows for why in r["rejected"].values())  # not this machine's reason
    rc, text, _ = run_main(capsys, "table", "--op", "rms_norm")
    assert "not this machine: -> is its own choice" in text
