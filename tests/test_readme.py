"""Every ```python block of the README runs as written, each as its own script in a fresh process
(with its own KFORGE_HOME), so a snippet that breaks fails the suite. A block right after a line
`<!-- gpu -->` needs CUDA and is skipped without one. The user-op block runs twice: a script that
defines an op must run again."""
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
