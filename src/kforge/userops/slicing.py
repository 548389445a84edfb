"""What of a user's file a persisted op keeps: its two functions and what they use, not the script.

A script that defines an op usually does more at its top level (builds inputs, calls the op,
prints, trains a model). Persisting the whole file would run all of that again wherever the op is
loaded by name (another script, a sandboxed worker). `slice_source` keeps, in the file's order, the
`__future__` imports, then every top-level statement that binds a name the functions need,
transitively: imports, function and class definitions, assignments. A `@kforge.op(...)` decorator
is dropped from what is kept (the stored function is the plain reference); other decorators stay.
"""
from __future__ import annotations

import ast
import re
import symtable

from kforge.userops.build import UserOpError

_KFORGE_OP = re.compile(r"^(kforge\.)?op\(")  # the decorator form of define_op


def _bound(node: ast.stmt) -> set[str]:
    """Top-level names `node` binds."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
        node, (ast.AnnAssign, ast.AugAssign)) else []
    return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}


def _scope_globals(table: symtable.SymbolTable) -> set[str]:
    """The module-level names a function or class body reads, nested scopes included."""
    if isinstance(table, symtable.Function):
        names = set(table.get_globals())
    else:
        names = {s.get_name() for s in table.get_symbols() if s.is_global() or (
            s.is_referenced() and not s.is_assigned() and not s.is_imported() and not s.is_local())}
    for child in table.get_children():
        names |= _scope_globals(child)
    return names


def _used(node: ast.stmt, source: str, scopes: dict[tuple[str, int], symtable.SymbolTable]) -> set[str]:
    """Module-level names `node` reads: at module scope (decorators but kforge.op, defaults,
    annotations, bases, an assignment's value) and inside its body (free names of the scope)."""
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    outer: list[ast.AST] = [d for d in node.decorator_list
                            if not _KFORGE_OP.match(ast.get_source_segment(source, d) or "")]
    if isinstance(node, ast.ClassDef):
        outer += [*node.bases, *node.keywords]
    else:
        args = node.args
        outer += [*args.defaults, *(d for d in args.kw_defaults if d is not None)]
        outer += [a.annotation for a in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg)
                  if a is not None and a.annotation is not None] + ([node.returns] if node.returns else [])
    names = {n.id for p in outer for n in ast.walk(p) if isinstance(n, ast.Name)}
    scope = scopes.get((node.name, node.lineno))
    return names | (_scope_globals(scope) if scope is not None else set())


def _text(node: ast.stmt, source: str) -> str:
    text = ast.get_source_segment(source, node) or ast.unparse(node)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        decorators = [ast.get_source_segment(source, d) or ast.unparse(d) for d in node.decorator_list]
        text = "".join(f"@{d}\n" for d in decorators if not _KFORGE_OP.match(d)) + text
    return text


def slice_source(source: str, names: tuple[str, ...], *, op: str) -> str:
    """The part of `source` (a module's text) that defines `names` and everything they use."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise UserOpError(f"op {op!r}: its file does not parse ({exc.msg}, line {exc.lineno})") from None
    body = tree.body
    scopes = {(t.get_name(), t.get_lineno()): t for t in symtable.symtable(source, "<op file>", "exec").get_children()}
    binders: dict[str, list[int]] = {}
    for i, node in enumerate(body):
        for name in _bound(node):
            binders.setdefault(name, []).append(i)
    missing = [n for n in names if n not in binders]
    if missing:
        raise UserOpError(f"op {op!r}: {', '.join(missing)} not defined at the top level of its file")
    keep = {i for i, node in enumerate(body) if isinstance(node, ast.ImportFrom) and node.module == "__future__"}
    todo = list(names)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for i in binders.get(name, ()):  # every binding: a name assigned twice needs both
            if i not in keep:
                keep.add(i)
                todo.extend(_used(body[i], source, scopes) - seen)
    return "\n\n".join(_text(body[i], source) for i in sorted(keep)) + "\n"
