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


def test_a_run_names_the_code_it_ran_clean_or_dirty(tmp_path):
    """Every benchmark JSON's environment: the package's digest always, and where git can say,
    whether the tree was clean and, if not, a hash of its diff (issue 20: three JSONs named a
    commit whose tree lacked the ops they measured)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from common import tree_state
    finally:
        sys.path.remove(str(BENCHMARKS))
    pkg = tmp_path / "src" / "kforge"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "a.pyc").write_bytes(b"cache")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / ".gitignore").write_text("__pycache__/\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    clean = tree_state(tmp_path)
    assert clean["tree"] == "clean" and "diff_sha256" not in clean
    (pkg / "__pycache__" / "a.pyc").write_bytes(b"other cache")
    assert tree_state(tmp_path)["src_sha256"] == clean["src_sha256"]  # caches are not code
    (pkg / "a.py").write_text("x = 2\n")
    dirty = tree_state(tmp_path)
    assert dirty["tree"] == "dirty" and dirty["src_sha256"] != clean["src_sha256"]
    (pkg / "a.py").write_text("x = 3\n")
    assert tree_state(tmp_path)["diff_sha256"] != dirty["diff_sha256"]
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "new.py").write_text("")  # an untracked file is a dirty tree too
    assert tree_state(tmp_path)["tree"] == "dirty"
    (tmp_path / ".git").rename(tmp_path / "no-git")  # the device's copy may have no usable .git
    assert set(tree_state(tmp_path)) == {"src_sha256"}


def test_models_benchmark_smoke_routes_the_patched_variant(tmp_path):
    """benchmarks/models.py on this CPU at tiny widths: every variant timed, the patched one's logits
    within a rounding of eager's and its norms, gates and rotary really served by kforge."""
    out = tmp_path / "models.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "models.py"), "--smoke", "--models", "llama3-8b", "--regimes",
                    "decode1,prefill1x2048", "--variants", "eager,patch,control", "--layers", "1", "--reps", "2",
                    "--steps", "2", "--context", "8", "--out", str(out)], check=True, capture_output=True, timeout=300,
                   env={**os.environ, "KFORGE_NATIVE": "0"})
    import json

    data = json.loads(out.read_text())
    (model,) = data["models"]
    assert set(model["regimes"]) == {"decode1", "prefill1x2048"}
    for row in model["regimes"].values():
        assert set(row["variants"]) == {"eager", "patch", "control"} and not row["errors"]
        assert {"patch/eager", "control/eager"} <= set(row["ratios"])
    assert model["regimes"]["prefill1x2048"]["accuracy_vs_eager"]["patch"] < 1e-5
    calls = {op: s["calls"] for op, s in model["kforge_stats"]["ops"].items()}
    assert {"rms_norm", "silu_and_mul", "rotary_embedding"} <= {op for op, n in calls.items() if n > 0}
