"""benchmarks/ is layered too: its modules import each other without a cycle (a runner imports its
report, never the other way), use kforge's public names only, build their models from
kforge.compile.models (not from tests/), and every one imports without a GPU (the GPU work runs
under `main`)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from test_layering import cycles

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MODULES = sorted(p.stem for p in BENCHMARKS.glob("*.py"))


def _tree(name: str) -> ast.Module:
    return ast.parse((BENCHMARKS / f"{name}.py").read_text())


def test_the_benchmarks_import_each_other_without_a_cycle():
    """Imports at any scope count: a report importing its runner inside a function is still a circle."""
    graph = {}
    for name in MODULES:
        found = set()
        for node in ast.walk(_tree(name)):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module)
        graph[name] = found & set(MODULES) - {name}
    assert len(graph) > 10 and any(graph.values())  # the walk found the modules and their imports
    assert not cycles(graph), f"import cycles among benchmarks/*.py: {cycles(graph)}"


def test_the_benchmarks_use_public_names_of_kforge():
    """No `from kforge... import _x`, and no `_x` attribute of a kforge module they imported."""
    private = []
    for name in MODULES:
        tree = _tree(name)
        kforge_names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "kforge":
                private += [f"{name}: from {node.module} import {a.name}" for a in node.names if a.name.startswith("_")]
                kforge_names |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.Import):
                kforge_names |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("kforge")}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                    and isinstance(node.value, ast.Name) and node.value.id in kforge_names:
                private.append(f"{name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not private, f"private kforge names used by benchmarks: {private}"


def test_the_model_blocks_live_outside_tests():
    tests = Path(__file__).resolve().parent
    assert not (tests / "blocks.py").exists()
    for name in MODULES:
        text = (BENCHMARKS / f"{name}.py").read_text()
        assert "from blocks import" not in text and "import blocks" not in text, name


def test_every_benchmark_imports_without_a_gpu():
    """One fresh interpreter with no CUDA device visible imports every module (what a report run
    on a laptop, or this test on CI, needs)."""
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join(
        [str(BENCHMARKS), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])}
    done = subprocess.run([sys.executable, "-c", code, *MODULES], cwd=BENCHMARKS, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
