"""The shape of a candidate module, as an allow-list (part of `kforge.checks.static`):

- its top level holds only a docstring, imports, constants, the `DOMAIN` / `SEARCH_SPACE` data
  and function definitions. Constants are immutable values computed from literals (arithmetic,
  tuples, f-strings, `tl.constexpr(...)`, pure builtins); `DOMAIN` and `SEARCH_SPACE` may also
  hold lists, dicts and comprehensions, and no function may name them. So nothing `forward` can
  reach keeps state across calls (a cache, a call counter);
- no class anywhere (a Tensor subclass that computes when first touched is a lazy output);
- function decorators only `triton.jit`, `triton.autotune`, `triton.heuristics` (with their
  listed keyword arguments; no hooks), and default arguments only immutable constants (a
  `cache=[]` default is module state too);
- no generators or coroutines (work deferred past the call).
"""
from __future__ import annotations

import ast

from kforge.checks import names as N
from kforge.checks.rules import Rule


def is_constant(node: ast.AST, checker, consts: set[str], local: frozenset[str] = frozenset(), data=False) -> bool:
    """Whether `node` evaluates to an immutable constant (or, with data=True, to plain data:
    also lists, dicts, sets and their comprehensions) built from literals and `consts`."""
    def const(n, loc=local):
        return is_constant(n, checker, consts, loc, data)

    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return node.id in consts or node.id in local or node.id in ("None", "True", "False")
    if isinstance(node, ast.Attribute):
        path = checker.resolve(node)
        return path is not None and (path in N.TORCH_CONSTANTS or path.startswith("math.") or
                                     (path in N.triton_language_names() and path not in N.triton_language_modules()))
    if isinstance(node, (ast.Tuple, ast.Starred)):
        return all(const(e) for e in (node.elts if isinstance(node, ast.Tuple) else [node.value]))
    if isinstance(node, ast.UnaryOp):
        return const(node.operand)
    if isinstance(node, ast.BinOp):
        return const(node.left) and const(node.right)
    if isinstance(node, (ast.BoolOp, ast.Compare)):
        return all(const(v) for v in (node.values if isinstance(node, ast.BoolOp) else [node.left, *node.comparators]))
    if isinstance(node, ast.IfExp):
        return const(node.test) and const(node.body) and const(node.orelse)
    if isinstance(node, ast.JoinedStr):
        return all(isinstance(v, ast.Constant) or (isinstance(v, ast.FormattedValue) and const(v.value)
                                                   and (v.format_spec is None or const(v.format_spec)))
                   for v in node.values)
    if isinstance(node, ast.Subscript):
        return const(node.value) and const(node.slice)
    if isinstance(node, ast.Slice):
        return all(p is None or const(p) for p in (node.lower, node.upper, node.step))
    if isinstance(node, ast.Call):
        func = node.func.id if isinstance(node.func, ast.Name) else checker.resolve(node.func)
        if func not in N.CONSTANT_CALLS or not all(kw.arg and const(kw.value) for kw in node.keywords):
            return False
        # A generator only as what tuple()/frozenset()/min()/max() consume: on its own it keeps state.
        return all(const(a) or (isinstance(a, ast.GeneratorExp) and func in ("tuple", "frozenset", "min", "max")
                                and _comprehension_ok(a, const)) for a in node.args)
    if data:
        if isinstance(node, (ast.List, ast.Set)):
            return all(const(e) for e in node.elts)
        if isinstance(node, ast.Dict):
            return all(k is not None and const(k) and const(v) for k, v in zip(node.keys, node.values))
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp)):
            return _comprehension_ok(node, const)
    return False


def _comprehension_ok(node, const) -> bool:
    local = set()
    for gen in node.generators:
        if gen.is_async or not const(gen.iter, frozenset(local)):
            return False
        targets = [gen.target] if isinstance(gen.target, ast.Name) else getattr(gen.target, "elts", None)
        if targets is None or not all(isinstance(t, ast.Name) for t in targets):
            return False
        local |= {t.id for t in targets}
        if not all(const(cond, frozenset(local)) for cond in gen.ifs):
            return False
    loc = frozenset(local)
    parts = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
    return all(const(p, loc) for p in parts)


def check_module(checker) -> None:
    """The top-level statements, decorators, defaults and classes of checker.tree."""
    consts: set[str] = set()
    for i, stmt in enumerate(checker.tree.body):
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str) \
                and i == 0:
            continue  # the docstring
        if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            continue  # imports: check_module of the checker; defs and classes: below
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            names = [t for target in targets for t in (target.elts if isinstance(target, ast.Tuple) else [target])]
            if not all(isinstance(t, ast.Name) for t in names):
                checker.flag(Rule.TOPLEVEL, stmt, f"'{ast.unparse(stmt)[:60]}': module level assigns only to names")
                continue
            data = any(t.id in N.DATA_NAMES for t in names)
            if not is_constant(stmt.value, checker, consts, data=data):
                what = "plain data (literals, lists, dicts, comprehensions)" if data else \
                    "an immutable constant (literals, tuples, arithmetic, tl.constexpr(...))"
                checker.flag(Rule.GLOBAL_STATE, stmt, f"module-level {', '.join(t.id for t in names)} must be {what}: "
                                                       "module state outlives a call")
            if not data:
                consts.update(t.id for t in names)
            continue
        checker.flag(Rule.TOPLEVEL, stmt, f"'{ast.unparse(stmt).splitlines()[0][:60]}' at module level: only a "
                                           "docstring, imports, constants, DOMAIN, SEARCH_SPACE and defs")
    for node in ast.walk(checker.tree):
        if isinstance(node, ast.ClassDef):
            checker.flag(Rule.CLASS, node, f"defines class {node.name}: no classes (a Tensor subclass can compute "
                                            "lazily, after the timed call)")
        elif isinstance(node, (ast.AsyncFunctionDef, ast.Yield, ast.YieldFrom, ast.Await)):
            checker.flag(Rule.DYNAMIC, node, "a generator or coroutine: work deferred past the call")
        elif isinstance(node, (ast.FunctionDef, ast.Lambda)):
            _check_function(checker, node, consts)


def _check_function(checker, fn, consts: set[str]) -> None:
    a = fn.args
    for default in [*a.defaults, *(d for d in a.kw_defaults if d is not None)]:
        if not is_constant(default, checker, consts):
            checker.flag(Rule.GLOBAL_STATE, default, f"default argument {ast.unparse(default)[:40]} is not an "
                                                      "immutable constant: it would keep state across calls")
    for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
        if arg is not None and isinstance(arg.annotation, ast.Constant):
            checker.flag(Rule.DYNAMIC, arg, f"string annotation on {arg.arg}: typing.get_type_hints evaluates it")
    if isinstance(fn, ast.Lambda):
        return
    if isinstance(fn.returns, ast.Constant):
        checker.flag(Rule.DYNAMIC, fn, f"string return annotation on {fn.name}: typing.get_type_hints evaluates it")
    if is_dunder(fn.name):
        checker.flag(Rule.DYNAMIC, fn, f"defines {fn.name}: no special names (a module __getattr__ is a hook)")
    for dec in fn.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        path = checker.resolve(target)
        if path not in N.TRITON_DECORATORS:
            checker.flag(Rule.API, dec, f"decorator {ast.unparse(dec)[:50]} on {fn.name}: only "
                                         f"{', '.join(sorted(N.TRITON_DECORATORS))}")
        elif fn.name not in checker.toplevel or checker.toplevel[fn.name] is not fn:
            checker.flag(Rule.API, dec, f"{fn.name}: kernels are module-level functions")


def check_triton_call(checker, node: ast.Call, path: str) -> None:
    """Keyword arguments of triton.jit/autotune/heuristics/Config: the listed ones only."""
    allowed = N.TRITON_KWARGS.get(path)
    if allowed is None:
        return
    for kw in node.keywords:
        if kw.arg is None or kw.arg not in allowed:
            checker.flag(Rule.API, node, f"{path}({kw.arg or '**'}=...): allowed keyword arguments are "
                                                  f"{', '.join(sorted(allowed)) or 'none'} (no hooks)")


def is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")
