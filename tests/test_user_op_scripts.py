"""A script that defines an op, as the README shows one: it runs again and again (the same
definition is the same op), a changed definition is refused saying what changed, and loading the op
by name elsewhere runs the op's functions only, never the rest of the script."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kforge.userops.build import UserOpError
from kforge.userops.slicing import slice_source

SCRIPT = '''import pathlib
import torch
import kforge

SCALE = 2.0 ** 0.5


def helper(t):
    return torch.relu(t) * SCALE


def reference(x, scale: float):
    return helper(x) * scale


def make_inputs(shape, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g).to(device, dtype), 0.5)


op = kforge.define_op("script_relu", "(Tensor x, float scale) -> Tensor", reference, make_inputs,
                      shapes=[(8, 16)])
x = torch.ones(2, 3)
print("side effect", op(x, 0.5).sum().item())
pathlib.Path(MARKER).write_text("ran")
'''


def run(code: str, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "KFORGE_HOME": str(home), "KFORGE_BUNDLED_TABLE": "none"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def write_script(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "define_script_relu.py"
    path.write_text(text.replace("MARKER", repr(str(tmp_path / "marker"))))
    return path


def test_a_defining_script_runs_twice_and_loading_by_name_runs_nothing_else(tmp_path):
    home = tmp_path / "home"
    script = write_script(tmp_path, SCRIPT)
    runner = f"exec(compile(open({str(script)!r}).read(), {str(script)!r}, 'exec'))"
    first = run(runner, home, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    definition = home / "ops" / "script_relu" / "definition.json"
    written = definition.stat().st_mtime_ns, (definition.parent / "source.py").read_text()
    second = run(runner, home, tmp_path)  # the same definition: the same op, nothing rewritten
    assert second.returncode == 0, second.stderr[-2000:]
    assert "side effect" in second.stdout
    assert (definition.stat().st_mtime_ns, (definition.parent / "source.py").read_text()) == written
    stored = written[1]
    assert "def helper" in stored and "SCALE = " in stored and "side effect" not in stored and "define_op" not in stored
    (tmp_path / "marker").unlink()
    elsewhere = run("import torch, kforge\n"
                    "print(kforge.ops.script_relu(torch.full((2, 2), 2.0), 0.5).tolist())", home, tmp_path)
    assert elsewhere.returncode == 0, elsewhere.stderr[-2000:]
    assert "side effect" not in elsewhere.stdout and not (tmp_path / "marker").exists()
    value = 2.0 * 2.0 ** 0.5 * 0.5
    assert json.loads(elsewhere.stdout.strip()) == [[pytest.approx(value)] * 2] * 2


@pytest.mark.parametrize("change, named", [
    (("return helper(x) * scale", "return helper(x) * scale * 2"), "the code of its functions"),
    (("SCALE = 2.0 ** 0.5", "SCALE = 3.0"), "the code of its functions"),  # what a function uses
    (("shapes=[(8, 16)]", "shapes=[(4, 16)]"), "shapes"),
])
def test_another_definition_under_the_name_is_refused_saying_what_differs(tmp_path, change, named):
    home = tmp_path / "home"
    script = write_script(tmp_path, SCRIPT)
    runner = f"exec(compile(open({str(script)!r}).read(), {str(script)!r}, 'exec'))"
    assert run(runner, home, tmp_path).returncode == 0
    before = (home / "ops" / "script_relu" / "source.py").read_text()
    write_script(tmp_path, SCRIPT.replace(*change))
    again = run(runner, home, tmp_path)
    assert again.returncode != 0
    assert "UserOpError" in again.stderr and "another definition" in again.stderr and named in again.stderr
    assert "replace=True" in again.stderr
    assert (home / "ops" / "script_relu" / "source.py").read_text() == before


def test_the_slice_keeps_what_the_functions_use_and_drops_the_script():
    source = '''from __future__ import annotations
import math, os
import torch
import kforge
from somewhere import unused_helper

LIMIT = math.sqrt(2.0)
data = torch.randn(4, 4)
print("loading a dataset")


class Scaler:
    factor = LIMIT

    def __call__(self, t):
        return t * self.factor


def reference(x, scale: float = LIMIT):
    return Scaler()(x) * scale


@kforge.op("(Tensor x) -> Tensor", make_inputs, shapes=[(2, 2)])
def negated(x):
    return -x


def make_inputs(shape, dtype, device, seed):
    return (torch.ones(shape, dtype=dtype, device=device), 1.0)


entry = kforge.define_op("scaler", "(Tensor x, float scale) -> Tensor", reference, make_inputs, shapes=[(4, 4)])
entry(data, 1.0)
'''
    kept = slice_source(source, ("reference", "make_inputs"), op="scaler")
    namespace: dict = {}
    exec(compile(kept, "<slice>", "exec"), namespace)  # runs: nothing it needs was dropped
    assert namespace["reference"](torch_ones(), 1.0).tolist() == [pytest.approx(2.0 ** 0.5)] * 3
    assert "import math, os" in kept  # a statement is kept whole
    for dropped in ("print(", "data =", "define_op", "somewhere", "negated", "import kforge"):
        assert dropped not in kept, dropped
    decorated = slice_source(source, ("negated", "make_inputs"), op="neg")
    assert "@kforge.op" not in decorated and "def negated" in decorated
    with pytest.raises(UserOpError, match="nope not defined at the top level"):
        slice_source(source, ("reference", "nope"), op="scaler")
    with pytest.raises(UserOpError, match="does not parse"):
        slice_source("def reference(:\n", ("reference",), op="broken")


def torch_ones():
    import torch

    return torch.ones(3)
