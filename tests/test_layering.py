"""The layers of kforge, read from the source with `ast` (every import at any scope, function
bodies and `importlib.import_module("...")` calls included). Each layer imports only itself and
the layers before it; the order (issue 15) is

     0  errors                  what every layer raises
     1  specs                   OpSpec, argument checks, one module per built-in op
     2  version, records, paths, files, redact, device, checks, catalog, shapes
                                what the runtime shares: leaves, the static checker (it reads
                                specs), seed kernels, the models' shapes (they read specs)
     3  testing, candidate      "matches the reference"; a kernel file as a candidate
     4  store                   the content-addressed kernel store
     5  backends                vendor, inductor, triton implementations
     6  router                  dispatch, keys, the score table, pins, the miss log
     7  ops                     the facade: registers every spec (torch.library + router)
     8  userops                 user-defined ops: define, persist, load, KernelBench, untrusted
     9  kforge                  the package __init__: kforge.ops, define_op, use, stats, ...
    10  compile                 the torch.compile backend and its patterns
    11  evaluate                the harness, sandbox, correctness and timing
    12  gen                     generation: prompts, providers, the search
    13  issues                  kernel requests from GitHub issues
    14  cli                     the command line (and __main__)

so the runtime (layers 0-9) never imports the offline side (10-14); it also never imports an LLM
SDK or Ray. Imports upward are allowed only inside a function and only where listed in `UPWARD`
(a facade that loads a higher layer on demand). Every module must belong to a layer: a new package
is placed here first. Separately, the module-level imports among kforge modules (what runs at
import time, function bodies excluded) must have no cycle; a failure names the cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import kforge

SRC = Path(kforge.__file__).resolve().parent  # src/kforge
LAYERS = (
    ("kforge.errors",),
    ("kforge.specs",),
    ("kforge.version", "kforge.records", "kforge.paths", "kforge.files", "kforge.redact", "kforge.device",
     "kforge.checks", "kforge.catalog", "kforge.shapes"),
    ("kforge.testing", "kforge.candidate"),
    ("kforge.store",),
    ("kforge.backends",),
    ("kforge.router",),
    ("kforge.ops",),
    ("kforge.userops",),
    ("kforge.patching",),
    ("kforge",),  # the package __init__ alone; its submodules sit in their own layers
    ("kforge.compile",),
    ("kforge.evaluate",),
    ("kforge.gen",),
    ("kforge.issues",),
    ("kforge.cli", "kforge.__main__"),
)
FIRST_OFFLINE = 11  # compile: the layers from here on are the offline side
OFFLINE_THIRD_PARTY = ("anthropic", "openai", "ray")
# (module, imported name) pairs that point upward, each imported only inside a function.
UPWARD = {
    ("kforge", "kforge.compile.explain.explain"),  # kforge.explain: `import kforge` loads no compile code
    ("kforge.ops", "kforge.userops.load"),  # get_spec / kforge.ops.<name> of a persisted user op
    ("kforge.ops", "kforge.userops.persist"),
}


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imported(node: ast.AST, package: str) -> list[str]:
    """The absolute names one import node (or `importlib.import_module("a")` call) imports: `import
    a.b` gives `a.b`, `from a import b` gives `a.b` (b may be a submodule, so `from kforge import
    gen` is caught)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[:len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        return [base if alias.name == "*" else f"{base}.{alias.name}" for alias in node.names]
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in ("import_module", "__import__"):
            return [node.args[0].value]
    return []


def _walk_module_level(tree: ast.Module):
    """The nodes that run when the module is imported: all but function (and lambda) bodies."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))


def imports_of(source: str, module: str, is_package: bool, module_level: bool = False) -> set[str]:
    """Every name `source` imports, absolute: at any scope, or only at module level."""
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(source)
    nodes = _walk_module_level(tree) if module_level else ast.walk(tree)
    found = {name for node in nodes for name in _imported(node, package)}
    found.discard("")
    return found


def within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layer_of(module: str) -> int | None:
    """The layer of a kforge module: that of its longest listed prefix (`kforge` itself lists
    only the package __init__)."""
    best, best_len = None, -1
    for i, members in enumerate(LAYERS):
        for member in members:
            hit = module == member if member == "kforge" else within(module, (member,))
            if hit and len(member) > best_len:
                best, best_len = i, len(member)
    return best


def module_of(name: str, modules) -> str | None:
    """The module an imported name lives in: `kforge.specs.OpSpec` -> `kforge.specs`."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def sources(root: Path) -> dict[str, Path]:
    """Every kforge module under `root`. Not the bundled table's kernel files (tables/kernels/: data
    pinned by sha256, like the candidates tests load by path, never imported as kforge modules)."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py")) if p.relative_to(root).parts[0] != "tables"}


def violations(root: Path) -> list[tuple[str, str, str]]:
    """(module, import, rule) for every import under `root` (a directory laid out as src/kforge)
    that breaks the order."""
    out = []
    mods = sources(root)
    for module, path in mods.items():
        here = layer_of(module)
        if here is None:
            out.append((module, "", "module in no layer: place its package in LAYERS"))
            continue
        text, is_package = path.read_text(), path.name == "__init__.py"
        top = imports_of(text, module, is_package, module_level=True)
        for name in sorted(imports_of(text, module, is_package)):
            if here < FIRST_OFFLINE and within(name, OFFLINE_THIRD_PARTY):
                out.append((module, name, "runtime imports an LLM SDK or Ray"))
            target = module_of(name, mods) if within(name, ("kforge",)) else None
            there = None if target is None else layer_of(target)
            if there is not None and there > here and ((module, name) not in UPWARD or name in top):
                out.append((module, name, f"layer {here} ({LAYERS[here][0]}) imports layer {there} ({LAYERS[there][0]})"))
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the kforge modules it imports at module level (a name in a module counts as
    its module: `from kforge.specs import OpSpec` is an edge to kforge.specs)."""
    mods = sources(root)
    graph: dict[str, set[str]] = {}
    for module, path in mods.items():
        edges = set()
        for name in imports_of(path.read_text(), module, path.name == "__init__.py", module_level=True):
            target = module_of(name, mods)
            if target is not None and target != module:
                edges.add(target)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> ... -> a, as a list ending where it starts) per strongly connected set of
    modules (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                members = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.add(member)
                    if member == node:
                        break
                if len(members) > 1:
                    found.append(_cycle_through(min(members), members, graph))
    return found


def _cycle_through(start: str, members: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path start -> ... -> start inside `members` (breadth first)."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(members)}")


def test_every_layer_names_real_modules():
    """The order's module list names real modules: a rename would otherwise silence the test."""
    modules = set(sources(SRC))
    for members in LAYERS:
        for member in members:
            assert any(within(m, (member,)) for m in modules), f"no module matches {member!r}"
    for module, name in UPWARD:
        assert module in modules and within(name, {m for m in modules}), (module, name)


def test_layer_order():
    found = violations(SRC)
    assert not found, "imports breaking the layer order (tests/test_layering.py's docstring):\n" + "\n".join(
        f"  {module} imports {name}  ({rule})" for module, name, rule in found)


def test_no_import_cycle():
    found = cycles(import_graph(SRC))
    assert not found, "module-level import cycles among kforge modules:\n" + "\n".join(
        "  " + " -> ".join(cycle) for cycle in found)


def test_upward_imports_stay_inside_functions():
    """Each allowed upward import is one that `import kforge` does not run."""
    for module, name in UPWARD:
        path = sources(SRC)[module]
        text = path.read_text()
        is_package = path.name == "__init__.py"
        assert name in imports_of(text, module, is_package), f"{module} no longer imports {name}: drop it from UPWARD"
        assert name not in imports_of(text, module, is_package, module_level=True), (module, name)


def test_every_spec_parameter_is_an_opspec():
    """`spec` parameters carry the type `OpSpec`, imported at module level (no TYPE_CHECKING)."""
    untyped, guarded = [], []
    for module, path in sources(SRC).items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                guarded.append(module)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                for arg in args.posonlyargs + args.args + args.kwonlyargs:
                    if arg.arg == "spec" and (arg.annotation is None or ast.unparse(arg.annotation) not in (
                            "OpSpec", "OpSpec | None")):
                        untyped.append(f"{module}.{node.name}:{node.lineno}")
    assert not untyped, f"spec parameters without the type OpSpec: {untyped}"
    assert not guarded, f"TYPE_CHECKING imports: {guarded}"


# -- the checker itself ---------------------------------------------------------------------------
def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def fake_tree(tmp_path):
    """A package laid out like kforge with one offence of each kind, hidden in every way an
    import can hide."""
    root = tmp_path / "kforge"
    files = {
        "__init__.py": "from kforge import ops\ndef explain():\n    from kforge.compile.explain import explain\n",
        "errors.py": "",
        "compile/explain.py": "",
        "specs/__init__.py": "",
        "specs/spec.py": "",
        "specs/checks.py": "",
        "ops/__init__.py": "from kforge.ops.entry import register_op\nfrom kforge.userops import load\n",  # module level
        "ops/entry.py": "from kforge.router.dispatch import ROUTER\n",  # allowed: the facade sits above the router
        "specs/good.py": "import torch\nfrom kforge.specs import checks\nfrom . import spec\nfrom kforge.errors import E\n",
        "specs/bad.py": "def f():\n    from ..router import dispatch\n    import kforge.backends.vendor\n",
        "specs/leaf.py": "from kforge.records import OP_NAME\n",
        "backends/__init__.py": "",
        "backends/bad.py": "if True:\n    from kforge.router.table import ScoreTable\n",
        "router/__init__.py": "",
        "router/dispatch.py": "class R:\n    def m(self):\n        import anthropic\n        from kforge import gen\n",
        "router/lazy.py": "import importlib\nmod = importlib.import_module('openai.types')\n",
        "records.py": "try:\n    import ray\nexcept ImportError:\n    pass\n",
        "userops/load.py": "from kforge.ops.registry import SPECS\n",
        "gen/__init__.py": "import anthropic\nfrom kforge.router import dispatch\n",  # offline may import both
        "cli/main.py": "import kforge.gen\n",
        "newpkg/thing.py": "",
    }
    for rel, text in files.items():
        _write(root, rel, text)
    return root


def test_checker_finds_every_offence(fake_tree):
    found = {(module, name) for module, name, _ in violations(fake_tree)}
    assert found == {
        ("kforge.specs.bad", "kforge.router.dispatch"),
        ("kforge.specs.bad", "kforge.backends.vendor"),
        ("kforge.specs.leaf", "kforge.records.OP_NAME"),
        ("kforge.backends.bad", "kforge.router.table.ScoreTable"),
        ("kforge.router.dispatch", "anthropic"),
        ("kforge.router.dispatch", "kforge.gen"),
        ("kforge.router.lazy", "openai.types"),
        ("kforge.records", "ray"),
        ("kforge.ops", "kforge.userops.load"),  # upward is allowed only inside a function
        ("kforge.newpkg.thing", ""),
    }


def test_cycle_finder_names_each_cycle(tmp_path):
    root = tmp_path / "kforge"
    files = {
        "__init__.py": "",
        "a.py": "from kforge import b\n",
        "b.py": "from kforge.c import thing\n",
        "c.py": "import kforge.a\n",
        "d.py": "def f():\n    import kforge.e\n",  # inside a function: not an import-time cycle
        "e.py": "from kforge.d import f\n",
        "p/__init__.py": "from kforge.p.q import x\n",
        "p/q.py": "from kforge.p import y\n",
    }
    for rel, text in files.items():
        _write(root, rel, text)
    found = cycles(import_graph(root))
    assert found == [["kforge.a", "kforge.b", "kforge.c", "kforge.a"], ["kforge.p", "kforge.p.q", "kforge.p"]]
