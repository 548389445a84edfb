"""The compile patterns as a registry (`kforge.compile.patterns`): every registered built-in op is
what some pattern rewrites to, or is listed in `UNMATCHED` with the reason it has none, so a new
op cannot be left out of torch.compile by accident; and every pattern's `example` (its natural
spelling) compiles to its op and still matches the op's reference, so a new pattern is tested
from where it is written. (What each pattern matches and rejects in models and near misses:
tests/test_compile_backend.py, test_compile_moe_loss.py, test_compile_rotary.py.)"""
from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch

from kforge.compile import patterns
from kforge.compile.patterns import PATTERNS, UNMATCHED
from kforge.compile.patterns.base import Pattern
from kforge.compile.backend import kforge_backend
from kforge.ops import SPECS, is_builtin
from kforge.testing import assert_matches_reference

EXAMPLES = [p for p in PATTERNS if p.example is not None]


def test_every_builtin_op_has_a_pattern_or_a_reason_for_none():
    builtin = {op for op in SPECS if is_builtin(op)}
    matched = {op for p in PATTERNS for op in p.ops}
    missing = builtin - matched - set(UNMATCHED)
    assert not missing, (f"ops with no compile pattern: {sorted(missing)}; write one (docs/adding-an-op.md) "
                         "or list the op in kforge.compile.patterns.UNMATCHED with the reason")
    assert not matched & set(UNMATCHED), f"listed as unmatched but a pattern rewrites to them: {sorted(matched & set(UNMATCHED))}"
    assert matched <= builtin, f"patterns rewrite to ops that are not registered: {sorted(matched - builtin)}"
    assert set(UNMATCHED) <= builtin and all(reason.strip() for reason in UNMATCHED.values())


def test_pattern_names_are_unique_and_every_pattern_module_is_in_the_registry():
    """`kforge.explain` names patterns; a module under patterns/ left out of `PATTERNS` would
    silently match nothing."""
    assert len({p.name for p in PATTERNS}) == len(PATTERNS)
    assert all(isinstance(p, Pattern) for p in PATTERNS)
    listed = {id(p) for p in PATTERNS}
    for info in pkgutil.iter_modules(patterns.__path__):
        module = importlib.import_module(f"{patterns.__name__}.{info.name}")
        if info.name == "base":
            assert not hasattr(module, "PATTERNS")
            continue
        assert module.PATTERNS and all(id(p) in listed for p in module.PATTERNS), info.name


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("pattern", EXAMPLES, ids=lambda p: p.name)
@torch.no_grad()
def test_each_patterns_example_is_rewritten_to_its_op_and_matches_the_reference(pattern, fresh_dynamo):
    """At every smoke shape of the op, fp32 on the CPU (per call, the eager compiler: no table,
    so the rewritten call is routed to the vendor)."""
    spec = SPECS[pattern.op]
    for shape in spec.shapes("smoke"):
        args = spec.make_inputs(shape, torch.float32, "cpu", 0)
        tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

        def example(*ts, args=args):  # scalars stay constants of the graph, as in a model
            full = list(args)
            for i, t in zip(tensors, ts):
                full[i] = t
            return pattern.example(*full)

        graphs = []

        def backend(gm, example_inputs):
            fn = kforge_backend(gm, example_inputs, options={"compiler": "eager", "on_miss": "kforge"})
            graphs.append(gm)
            return fn

        assert_matches_reference(spec, args, pattern.example(*args))  # the example spells the op
        out = torch.compile(example, backend=backend, fullgraph=True)(*(args[i] for i in tensors))
        called = [n.target._opname for gm in graphs for n in gm.graph.nodes
                  if isinstance(n.target, torch._ops.OpOverload) and n.target.namespace == "kforge"]
        assert called == [pattern.op], (shape, called)
        assert_matches_reference(spec, args, out)
        torch._dynamo.reset()


def test_a_pattern_module_may_define_an_operation_the_vocabulary_lacks_but_not_change_one(monkeypatch):
    import torch.nn.functional as F
    from torch.fx import symbolic_trace

    from kforge.compile import graph

    for table in ("_PARAMS", "_DEFAULTS", "_FUNCTIONS", "_METHODS"):  # leave the shared tables as they were
        monkeypatch.setattr(graph, table, dict(getattr(graph, table)))
    graph.define("hardtanh", ("input", "min_val", "max_val"), functions=(F.hardtanh,), methods=("hardtanh",),
                 defaults={"min_val": -1.0, "max_val": 1.0})
    traced = symbolic_trace(lambda x: F.hardtanh(x, max_val=2.0))
    (node,) = [n for n in traced.graph.nodes if n.op == "call_function"]
    assert graph.canon(node) == "hardtanh"
    assert graph.arg(node, "max_val") == 2.0 and graph.arg(node, "min_val") == -1.0
    for name, kwargs in [("hardtanh", {}), ("my_softmax", {"functions": (F.softmax,)}), ("pow2", {"methods": ("pow",)})]:
        with pytest.raises(ValueError, match="cannot define"):
            graph.define(name, ("input",), **kwargs)
