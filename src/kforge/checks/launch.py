"""Launch metadata (part of `kforge.checks.static`). A grid callable (`kernel[grid]`) and a
`triton.heuristics` value receive a dict of the launch's arguments, tensors included, which the
tensor flow analysis cannot see into: `y = meta["y_ptr"]; y += meta["x_ptr"]` would be torch
compute on the host. So such a function may read its dict only as `meta["NAME"]`, and never a
NAME the kernel receives a tensor for at any of its launches (constexprs, Config keys and ints
are what an honest grid reads)."""
from __future__ import annotations

import ast

from kforge.checks.flow import CONTAINER, TENSOR
from kforge.checks.rules import Rule


def check(checker) -> None:
    tensor_params: dict[str, set[str]] = {name: set() for name in checker.kernel_names}
    users: list[tuple[ast.AST, str]] = []  # (function reading launch metadata, kernel)
    for fn, env in checker.envs.items():
        for node in ast.walk(fn):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in checker.kernel_names):
                continue
            kernel = node.func.value.id
            params = _params(checker.toplevel[kernel])
            for i, arg in enumerate(node.args):
                if isinstance(arg, ast.Starred):
                    tensor_params[kernel].update(params[i:])  # cannot tell which: all of the rest
                    break
                if i < len(params) and checker.kind(arg, env) in (TENSOR, CONTAINER):
                    tensor_params[kernel].add(params[i])
            for kw in node.keywords:
                if kw.arg is None or checker.kind(kw.value, env) in (TENSOR, CONTAINER):
                    tensor_params[kernel].update(params if kw.arg is None else [kw.arg])
            grid = _callable(checker, node.func.slice, fn)
            if grid is not None:
                users.append((grid, kernel))
    for kernel in checker.kernel_names:
        for dec in checker.toplevel[kernel].decorator_list:
            if isinstance(dec, ast.Call) and checker.resolve(dec.func) == "triton.heuristics" and dec.args \
                    and isinstance(dec.args[0], ast.Dict):
                for value in dec.args[0].values:
                    heuristic = _callable(checker, value, None)
                    if heuristic is not None:
                        users.append((heuristic, kernel))
    for fn, kernel in users:
        _check_reader(checker, fn, kernel, tensor_params[kernel])


def _params(fn) -> list[str]:
    return [a.arg for a in fn.args.posonlyargs + fn.args.args]


def _callable(checker, node: ast.AST, scope) -> ast.AST | None:
    """The lambda or def `node` names, when it is one (a grid may also be a tuple)."""
    if isinstance(node, ast.Lambda):
        return node
    if not isinstance(node, ast.Name):
        return None
    for stmt in ast.walk(scope) if scope is not None else ():
        if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Lambda) \
                and any(isinstance(t, ast.Name) and t.id == node.id for t in stmt.targets):
            return stmt.value
    fn = checker.toplevel.get(node.id)
    return fn if fn is not None and fn not in checker.kernels else None


def _check_reader(checker, fn, kernel: str, tensors: set[str]) -> None:
    params = _params(fn)
    if not params:
        return
    meta = params[0]
    body = fn.body if isinstance(fn.body, list) else [fn.body]
    for node in (n for stmt in body for n in ast.walk(stmt)):
        if not (isinstance(node, ast.Name) and node.id == meta):
            continue
        sub = checker.parents.get(node)
        key = sub.slice if isinstance(sub, ast.Subscript) and sub.value is node else None
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str) and isinstance(sub.ctx, ast.Load)):
            checker.flag(Rule.TORCH, node, f"uses the launch arguments of {kernel} ({meta}) other than as "
                                           f"{meta}['NAME']: they hold the launch's tensors")
        elif key.value in tensors:
            checker.flag(Rule.TORCH, node, f"reads tensor argument {key.value!r} of {kernel} from the launch "
                                           "arguments on the host: compute in a kernel")
