"""Which names in host code hold tensors (part of `kforge.checks.static`): the op's tensor
arguments, what the allowed allocations and views return, and what helper functions pass on and
return, to a fixpoint. The checks use it to reject arithmetic, comparison, indexing, iteration and
truth tests of tensors on the host."""
from __future__ import annotations

import ast

from kforge.checks.names import TENSOR_SCALAR_ATTRS, TENSOR_VIEWS, TORCH_ALLOC

TENSOR, CONTAINER = "tensor", "container"  # what the flow analysis knows a value to be


def functions(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


class TensorFlow:
    """Mixed into the checker: needs tree, spec, kernels, toplevel, params, returns, module_env,
    envs and resolve()."""

    def infer_types(self, forward) -> None:
        host = [f for f in functions(self.tree) if f not in self.kernels]
        if forward is not None and forward not in self.kernels:
            self.params["forward"] = self.forward_params(forward)
        def facts() -> str:
            return repr((self.params, self.returns, self.module_env, list(self.envs.values())))

        for _ in range(8):  # to a fixpoint: facts only accumulate
            before = facts()
            self.bind_block(self.tree.body, self.module_env, skip_functions=True)
            for fn in host:
                env = self.envs.setdefault(fn, {})
                env.update(self.params.get(fn.name, {}) if fn.name in self.toplevel else {})
                self.bind_block(fn.body, env, skip_functions=False)
                for node in ast.walk(fn):
                    if isinstance(node, ast.Return) and node.value is not None:
                        kind = self.kind(node.value, env)
                        if kind and fn.name in self.toplevel:
                            self.returns[fn.name] = kind
                    elif isinstance(node, ast.Call):
                        self.propagate_call(node, env)
            if facts() == before:
                break

    def forward_params(self, fn) -> dict[str, str]:
        args = fn.args.posonlyargs + fn.args.args
        if self.spec is not None:
            return {a.arg: TENSOR for i, a in enumerate(args) if i in self.spec.tensor_args}
        first_default = len(args) - len(fn.args.defaults)
        return {a.arg: TENSOR for i, a in enumerate(args) if i < first_default}

    def propagate_call(self, call: ast.Call, env: dict[str, str]) -> None:
        if not isinstance(call.func, ast.Name) or call.func.id not in self.toplevel:
            return
        fn = self.toplevel[call.func.id]
        if fn in self.kernels:
            return
        names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
        known = self.params.setdefault(fn.name, {})
        for i, arg in enumerate(call.args):
            kind = self.kind(arg, env)
            if kind and i < len(names):
                known[names[i]] = kind
        for kw in call.keywords:
            kind = self.kind(kw.value, env)
            if kind and kw.arg:
                known[kw.arg] = kind

    def bind_block(self, body, env: dict[str, str], skip_functions: bool) -> None:
        for stmt in body:
            for node in ast.walk(stmt):
                if skip_functions and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    continue
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        self.bind(target, node.value, env)
                elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and node.value is not None:
                    self.bind(node.target, node.value, env)
                elif isinstance(node, (ast.For, ast.comprehension)):
                    kind = self.kind(node.iter, env)
                    if kind:
                        self.bind_kind(node.target, TENSOR, env)

    def bind(self, target: ast.AST, value: ast.AST, env: dict[str, str]) -> None:
        if isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List)) \
                and len(target.elts) == len(value.elts):
            for t, v in zip(target.elts, value.elts):
                self.bind(t, v, env)
            return
        kind = self.kind(value, env)
        if kind:
            self.bind_kind(target, kind if isinstance(target, ast.Name) else TENSOR, env)

    def bind_kind(self, target: ast.AST, kind: str, env: dict[str, str]) -> None:
        if isinstance(target, ast.Name):
            env[target.id] = kind
        elif isinstance(target, ast.Starred):
            self.bind_kind(target.value, CONTAINER, env)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                self.bind_kind(t, TENSOR, env)

    def kind(self, node: ast.AST, env: dict[str, str]) -> str | None:
        """TENSOR or CONTAINER (holds tensors) when `node` is known to evaluate to one."""
        if isinstance(node, ast.Name):
            return env.get(node.id) or self.module_env.get(node.id)
        if isinstance(node, ast.Call):
            if self.resolve(node.func) in TORCH_ALLOC:
                return TENSOR
            if isinstance(node.func, ast.Attribute) and node.func.attr in TENSOR_VIEWS \
                    and self.kind(node.func.value, env) == TENSOR:
                return TENSOR
            if isinstance(node.func, ast.Name):
                return self.returns.get(node.func.id)
            return None
        if isinstance(node, ast.Attribute):
            if node.attr not in TENSOR_SCALAR_ATTRS and self.kind(node.value, env) == TENSOR:
                return TENSOR  # x.T, x.mT, x.data, x.real
            return None
        if isinstance(node, ast.Subscript):
            return TENSOR if self.kind(node.value, env) else None
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return CONTAINER if any(self.kind(e, env) for e in node.elts) else None
        if isinstance(node, ast.Dict):
            return CONTAINER if any(self.kind(v, env) for v in node.values) else None
        if isinstance(node, ast.IfExp):
            return self.kind(node.body, env) or self.kind(node.orelse, env)
        if isinstance(node, (ast.BinOp, ast.BoolOp, ast.UnaryOp)):
            operands = ([node.left, node.right] if isinstance(node, ast.BinOp)
                        else node.values if isinstance(node, ast.BoolOp) else [node.operand])
            return TENSOR if any(self.kind(o, env) for o in operands) else None
        if isinstance(node, (ast.Starred, ast.NamedExpr)):
            return self.kind(node.value, env)
        return None
