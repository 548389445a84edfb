"""Every ```python block of the README runs as written, each as its own script in a fresh process
(with its own KFORGE_HOME), so a snippet that breaks fails the suite. A block right after a line
`<!-- gpu -->` needs CUDA and is skipped without one. The user-op block runs twice: a script that
defines an op must run again. Every command of a ```bash block of the README and docs/ is checked
without running it (the demo and set-up have tests of their own): kforge's parser takes it, or
setup.sh takes its arguments."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(?P<mark><!-- gpu -->\n)?```python\n(?P<code>.*?)```", re.S)


def blocks() -> list[tuple[int, str, bool]]:
    text = (ROOT / "README.md").read_text()
    return [(text[:m.start()].count("\n") + 1, m["code"], bool(m["mark"])) for m in BLOCK.finditer(text)]


def test_the_readme_has_its_snippets():
    assert len(blocks()) >= 3  # the regex still finds them (quick start, torch.compile, user ops)


@pytest.mark.parametrize("line, code, gpu", blocks(), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_a_readme_block_runs_as_written(tmp_path, line, code, gpu):
    if gpu and not torch.cuda.is_available():
        pytest.skip("a GPU block")
    script = tmp_path / f"readme_line{line}.py"
    script.write_text(code)
    env = {**os.environ, "KFORGE_HOME": str(tmp_path / "home"), "KFORGE_BUNDLED_TABLE": "none"}
    for _ in range(2 if "define_op" in code else 1):
        run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, f"README.md line {line}:\n{run.stderr[-3000:]}"


SHELL_BLOCK = re.compile(r"```bash\n(?P<code>.*?)```", re.S)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shell_commands() -> list[tuple[str, int, list[str]]]:
    """(file, line, argv) of every command in the ```bash blocks of the README and docs/: comments
    dropped, `a && b` split, leading VAR=value assignments dropped."""
    import shlex

    out = []
    for path in DOCS:
        text = path.read_text()
        for m in SHELL_BLOCK.finditer(text):
            first = text[:m.start()].count("\n") + 2
            for n, line in enumerate(m["code"].splitlines()):
                words = shlex.split(line.replace("<this repository>", "REPO"), comments=True)
                while words:
                    cut = words.index("&&") if "&&" in words else len(words)
                    argv, words = words[:cut], words[cut + 1:]
                    while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):
                        argv = argv[1:]
                    out.append((path.name, first + n, argv))
    return out


def test_the_shell_blocks_hold_commands():
    programs = {argv[0] for _, _, argv in shell_commands()}
    assert {"kforge", ".venv/bin/kforge", "bash"} <= programs, programs  # the regex still finds them


@pytest.mark.parametrize("where, line, argv", [pytest.param(*c, id=f"{c[0]}:{c[1]}:{' '.join(c[2][:2])}")
                                               for c in shell_commands()])
def test_a_shell_block_command_is_one_kforge_takes(tmp_path, where, line, argv):
    """Each kforge command parses with kforge's own parser (a renamed flag or command fails here);
    setup.sh takes its arguments (run with --print-torch, which installs nothing)."""
    from kforge.cli.main import build_parser

    program, args = argv[0], argv[1:]
    if program in ("kforge", ".venv/bin/kforge"):
        try:
            build_parser().parse_args(args)
        except SystemExit:
            pytest.fail(f"{where} line {line}: `kforge {' '.join(args)}` does not parse")
    elif program == "bash" and args[:1] == ["scripts/setup.sh"]:
        run = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), *args[1:], "--print-torch"],
                             capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)})
        assert run.returncode == 0, f"{where} line {line}: {run.stderr}"
    elif argv[:3] == [".venv/bin/python", "-m", "pytest"]:
        assert set(args[2:]) <= {"-q", "-x", "-n", "0", "auto"}, argv
    else:
        assert program in ("git", "cd"), f"{where} line {line}: `{' '.join(argv)}`: a command this test cannot check"
