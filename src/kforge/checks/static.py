"""Static checks on a candidate's source, run before it is ever imported (on the AST, never regex):
by the evaluator before a candidate runs, and by the router before a stored kernel is imported
into a user's process (`check_stored`, cached by the source's sha256).

    findings = check_source(path.read_text(), spec)   # [] when the source may be run

An allow-list: what is not listed in `kforge.checks.names` is rejected. A candidate computes in
its Triton kernels; host code (everything outside `@triton.jit` functions) may only allocate,
reshape and launch:
  - imports: torch, triton, triton.language and its public math libraries, math, typing,
    __future__. Nothing else (functools is out too: `lru_cache` on `forward` memoizes);
  - triton.language: only its public names for the installed Triton (its `__all__`, and the
    functions of triton.language.math / extra.libdevice / extra.cuda.libdevice), never a module
    re-export (`triton.language.core` re-exports builtins and inspect);
  - torch: `torch.empty`, `empty_like`, `empty_strided`, dtypes, `torch.Tensor`/`Size`/`dtype`/
    `device`, `finfo`/`iinfo`, and the read-only `torch.cuda.device`, `current_device`,
    `get_device_properties`, `get_device_capability`, `is_available`;
  - attributes of values: tensor metadata and views (TENSOR_METHODS), dtype, device and
    Config fields (HOST_VALUE_ATTRS); in kernels, tl tensor and dtype attributes;
  - builtins: HOST_BUILTINS (KERNEL_BUILTINS in kernels); no type, object, super, vars, id,
    callable, hasattr, print, getattr, eval, exec, open, ...;
  - no attribute, and no name the file does not define, beginning with "_" (`_make_subclass`,
    `__builtins__`, `__loader__`); no dunder at all;
  - no arithmetic, comparison, indexing, iteration or truth test of a tensor on the host (a small
    flow analysis, `kforge.checks.flow`, knows which names hold tensors);
  - `@triton.jit` functions only launched from host code (`kernel[grid](...)`): never called or
    used as values there (under the interpreter a direct call runs the body as host Python), and
    kernels never use host functions or call their arguments;
  - grid callables and heuristics read the launch's arguments only as `meta["NAME"]`, never a
    tensor argument (`kforge.checks.launch`);
  - the module's shape (`kforge.checks.structure`): top level only docstring, imports, constants,
    DOMAIN / SEARCH_SPACE data and defs; no class; no mutable module state or default arguments.
Everywhere: no try/except (a fallback hides a broken kernel), streams or events, file system,
environment, network, processes or threads, `global`, constant-true `while` loops, and no
assignment to any attribute (patching torch.allclose, time.perf_counter, a kernel's launcher).
The checks are deliberately strict: a finding is a rejection, and an honest kernel file never
needs any of these.
"""
from __future__ import annotations

import ast
import builtins
import re
import threading

from kforge.checks import names as N
from kforge.checks import launch, structure
from kforge.checks.chains import ChainRules
from kforge.checks.flow import CONTAINER, TENSOR, TensorFlow, functions
from kforge.checks.names import ALLOWED_IMPORTS, HOST_VALUE_ATTRS, TENSOR_METHODS
from kforge.checks.rules import Finding, Rule
from kforge.specs import OpSpec

BUILTIN_NAMES = {n for n in dir(builtins) if not n.startswith("_")}
CODING = re.compile(r"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")  # PEP 263's declaration

_cache_lock = threading.Lock()
_stored: dict[tuple[str, str | None], tuple[Finding, ...]] = {}  # (sha256, op) -> findings


def check_source(source: str, spec: OpSpec | None = None) -> list[Finding]:
    """Findings that bar `source` (a candidate file's text) from being run, in line order; [] when
    none. `spec`, the op's OpSpec, says which of forward's parameters are tensors (without it,
    every parameter without a default is taken for one)."""
    for line, text in enumerate(source.splitlines()[:2], 1):
        cookie = CODING.match(text)
        if cookie and cookie.group(1).lower().replace("_", "-") not in ("utf-8", "utf8"):
            # compile() of the file's bytes would decode it as that codec (utf_7 turns "+AAo-" in
            # a comment into a newline): other code than the text checked here.
            return [Finding(Rule.ENCODING, line, f"declares coding {cookie.group(1)}: only UTF-8 source")]
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError) as exc:
        return [Finding(Rule.SYNTAX, getattr(exc, "lineno", None) or 0, f"does not parse: {exc}")]
    checker = _Checker(tree, spec)
    checker.run()
    unique = {(f.line, f.rule, f.message): f for f in checker.findings}
    return [unique[k] for k in sorted(unique)]


def check_stored(sha: str, source: str | bytes, spec: OpSpec | None = None) -> tuple[Finding, ...]:
    """`check_source` of a stored kernel whose bytes hash to `sha`, once per (sha, op) per process."""
    key = (sha, getattr(spec, "name", None))
    with _cache_lock:
        found = _stored.get(key)
    if found is None:
        text = source.decode("utf-8", errors="replace") if isinstance(source, bytes) else source
        found = tuple(check_source(text, spec))
        with _cache_lock:
            _stored[key] = found
    return found


def _dotted(node: ast.AST) -> str | None:
    """'a.b.c' for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _root_name(node: ast.AST) -> str | None:
    """The name at the root of a chain of attributes, subscripts and calls (`a` in a.b[0].c)."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _is_private(name: str) -> bool:
    return name.startswith("_") and not structure.is_dunder(name)


class _Checker(ChainRules, TensorFlow):
    def __init__(self, tree: ast.Module, spec: OpSpec):
        self.tree = tree
        self.spec = spec
        self.findings: list[Finding] = []
        self.aliases: dict[str, str] = {}  # local name -> dotted module path it was imported as
        self.toplevel = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        self.kernels: set[ast.AST] = set()
        self.kernel_names: set[str] = set()
        self.host_names: set[str] = set()  # module-level host functions
        self.kernel_params: set[str] = set()
        self.module_names = _bound_names(tree)
        self.params: dict[str, dict[str, str]] = {}  # host function -> its parameters known to hold tensors
        self.returns: dict[str, str] = {}  # host function -> what it returns, when tensors
        self.module_env: dict[str, str] = {}
        self.envs: dict[ast.AST, dict[str, str]] = {}  # host function node -> names known to hold tensors
        self.parents: dict[ast.AST, ast.AST] = {}
        self.decorators: set[ast.AST] = set()  # nodes inside a decorator expression

    def flag(self, rule: Rule, node: ast.AST, message: str) -> None:
        self.findings.append(Finding(rule, getattr(node, "lineno", 0), message))

    # -- passes ---------------------------------------------------------------------------------
    def run(self) -> None:
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
            for dec in getattr(node, "decorator_list", ()):
                self.decorators.update(ast.walk(dec))
        self.collect_imports()
        self.check_rebinding()
        self.kernels = {f for f in functions(self.tree) if self.is_kernel(f)}
        self.kernel_names = {name for name, f in self.toplevel.items() if f in self.kernels}
        self.host_names = set(self.toplevel) - self.kernel_names
        self.kernel_params = {a.arg for f in self.kernels for a in
                              f.args.posonlyargs + f.args.args + f.args.kwonlyargs}
        forward = self.toplevel.get("forward")
        if forward is None:
            self.flag(Rule.CONTRACT, self.tree, "defines no module-level forward(...)")
        elif forward in self.kernels:
            self.flag(Rule.CONTRACT, forward, "forward must be a host function that launches kernels, not a kernel")
        structure.check_module(self)
        self.infer_types(forward)
        launch.check(self)
        self.visit(self.tree, False, self.module_env, frozenset(self.module_names), None)

    def is_kernel(self, fn: ast.AST) -> bool:
        for dec in fn.decorator_list:
            target = dec.func if isinstance(dec, ast.Call) else dec
            if self.resolve(target) == "triton.jit":
                return True
        return False

    def resolve(self, node: ast.AST) -> str | None:
        """The dotted path a name or attribute chain rooted at an import refers to."""
        dotted = _dotted(node)
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        if head not in self.aliases:
            return None
        return self.aliases[head] + (f".{rest}" if rest else "")

    # -- the checks -----------------------------------------------------------------------------
    def visit(self, node: ast.AST, in_kernel: bool, env: dict[str, str], scope: frozenset[str],
              local: frozenset[str] | None) -> None:
        """Check `node` and below. env: names known to hold tensors; scope: names the code binds
        itself where `node` is (a parameter called `input` is not the builtin); local: those bound
        by the enclosing functions (None at module level)."""
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for dec in getattr(node, "decorator_list", ()):
                self.visit(dec, in_kernel, env, scope, local)
            inner_kernel = in_kernel or node in self.kernels
            inner_env = env if inner_kernel else {**env, **self.envs.get(node, {})}
            own = _bound_names(node)
            body = node.body if isinstance(node.body, list) else [node.body]
            for child in [node.args, *body] + ([node.returns] if getattr(node, "returns", None) else []):
                self.visit(child, inner_kernel, inner_env, scope | own, (local or frozenset()) | own)
            return
        self.check_node(node, in_kernel, env, scope, local)
        for child in ast.iter_child_nodes(node):
            self.visit(child, in_kernel, env, scope, local)

    def check_node(self, node, in_kernel: bool, env, scope, local) -> None:
        if isinstance(node, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            self.flag(Rule.FALLBACK, node, "try/except: a candidate may not catch errors to fall back")
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            self.flag(Rule.GLOBAL_STATE, node, f"'{type(node).__name__.lower()} {', '.join(node.names)}': "
                                               "state kept across calls")
        elif isinstance(node, ast.While) and isinstance(node.test, ast.Constant) and node.test.value:
            self.flag(Rule.HANG, node, f"'while {node.test.value!r}': a loop with a constant-true condition")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for target in targets:
                self.check_store(target, node, in_kernel, env, local)
        elif isinstance(node, ast.Name):
            self.check_name(node, in_kernel, scope, local)
        elif isinstance(node, ast.Attribute):
            self.check_attribute(node, in_kernel, env)
        elif isinstance(node, ast.Call):
            path = self.resolve(node.func)
            if path is not None:
                structure.check_triton_call(self, node, path)
            elif in_kernel and isinstance(node.func, ast.Name) and node.func.id in self.kernel_params \
                    and node.func.id not in self.kernel_names:
                self.flag(Rule.KERNEL_CALL, node, f"a kernel calls its argument {node.func.id}: under the interpreter "
                                                  "that runs host Python")
        if in_kernel:
            return
        if isinstance(node, ast.Call):
            self.check_builtin_call(node, env, scope)
        elif isinstance(node, ast.BinOp):
            self.check_operands(node, [node.left, node.right], env, "arithmetic on")
        elif isinstance(node, ast.UnaryOp):
            self.check_operands(node, [node.operand], env, "arithmetic on")
        elif isinstance(node, ast.AugAssign):
            self.check_operands(node, [node.target, node.value], env, "arithmetic on")
        elif isinstance(node, ast.BoolOp):
            self.check_operands(node, node.values, env, "the truth value of")
        elif isinstance(node, ast.Compare):
            if not all(isinstance(op, (ast.Is, ast.IsNot, ast.In, ast.NotIn)) for op in node.ops):
                self.check_operands(node, [node.left, *node.comparators], env, "a comparison of")
        elif isinstance(node, (ast.If, ast.While, ast.IfExp, ast.Assert)):
            self.check_operands(node, [node.test], env, "the truth value of")
        elif isinstance(node, ast.Subscript):
            if self.kind(node.value, env) == TENSOR:
                self.flag(Rule.TORCH, node, f"indexes tensor {ast.unparse(node.value)} on the host")
        elif isinstance(node, (ast.For, ast.comprehension)):
            if self.kind(node.iter, env) == TENSOR:
                self.flag(Rule.TORCH, node, f"iterates over tensor {ast.unparse(node.iter)} on the host")
        elif isinstance(node, ast.FormattedValue):
            self.check_operands(node, [node.value], env, "formatting of")

    def check_operands(self, node, operands, env, what: str) -> None:
        for operand in operands:
            if self.kind(operand, env):
                self.flag(Rule.TORCH, node, f"{what} tensor {ast.unparse(operand)} on the host: "
                                            "compute in a kernel")
                return

    def check_name(self, node: ast.Name, in_kernel: bool, scope: frozenset[str], local) -> None:
        name = node.id
        if structure.is_dunder(name):
            self.flag(Rule.DYNAMIC, node, f"uses {name}: no introspection")
            return
        if name not in scope:
            if name in N.BUILTIN_RULES:
                self.flag(Rule(N.BUILTIN_RULES[name]), node, f"uses {name}()")
            elif _is_private(name):
                self.flag(Rule.PRIVATE, node, f"uses {name}: no private names the file does not define")
            elif name not in (N.KERNEL_BUILTINS if in_kernel else N.HOST_BUILTINS):
                what = "a builtin outside the allow-list" if name in BUILTIN_NAMES else "a name the file never defines"
                self.flag(Rule.BUILTIN, node, f"uses {name}: {what}")
            return
        if local is not None and name in local:
            return  # a function's own name shadows the module's
        if name in N.DATA_NAMES and local is not None:
            self.flag(Rule.GLOBAL_STATE, node, f"uses {name} from code: DOMAIN and SEARCH_SPACE are data for kforge")
        elif name in self.kernel_names and not in_kernel:
            self.check_kernel_use(node)
        elif name in self.host_names and in_kernel:
            self.flag(Rule.KERNEL_CALL, node, f"a kernel uses host function {name}: kernels call only @triton.jit "
                                              "functions")
        elif name in self.aliases and not isinstance(self.parents.get(node), ast.Attribute) \
                and isinstance(node.ctx, ast.Load):
            path = self.aliases[name]
            if path in ALLOWED_IMPORTS or path in N.triton_language_modules():
                self.flag(Rule.DYNAMIC, node, f"uses module {name} as a value")
            elif "." in path:  # `from torch import empty`: the name is the chain
                self.check_chain(path, node, in_kernel)

    def check_kernel_use(self, node: ast.Name) -> None:
        """In host code a kernel only appears as `kernel[grid](...)`."""
        sub = self.parents.get(node)
        call = self.parents.get(sub)
        if isinstance(sub, ast.Subscript) and sub.value is node and isinstance(call, ast.Call) and call.func is sub:
            return
        self.flag(Rule.KERNEL_CALL, node, f"host code uses kernel {node.id} other than as {node.id}[grid](...): "
                                          "a @triton.jit function is only launched")

    def check_attribute(self, node: ast.Attribute, in_kernel: bool, env) -> None:
        if structure.is_dunder(node.attr):
            self.flag(Rule.DYNAMIC, node, f"accesses .{node.attr}: no introspection")
            return
        if node.attr.startswith("_"):
            self.flag(Rule.PRIVATE, node, f"accesses .{node.attr}: no private attributes")
        if node.attr in ("format", "format_map"):
            self.flag(Rule.DYNAMIC, node, f"uses .{node.attr}: a format string reads attributes the check never sees")
            return
        path = self.resolve(node)
        if path is None:
            if isinstance(node.value, ast.Name) and node.value.id in self.kernel_names:
                return  # reported by check_kernel_use
            if in_kernel:
                if node.attr not in N.kernel_value_attrs():
                    self.flag(Rule.ATTRIBUTE, node, f"a kernel reads .{node.attr} of a value: allowed are tl tensor "
                                                    "and dtype attributes")
            else:
                self.check_method(node, env)
        elif not isinstance(self.parents.get(node), ast.Attribute):
            self.check_chain(path, node, in_kernel)

    def check_store(self, target: ast.AST, stmt: ast.AST, in_kernel: bool, env, local) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                self.check_store(t, stmt, in_kernel, env, local)
            return
        if isinstance(target, ast.Starred):
            self.check_store(target.value, stmt, in_kernel, env, local)
            return
        if not isinstance(target, (ast.Attribute, ast.Subscript)):
            return
        root = _root_name(target)
        if isinstance(target, ast.Attribute) or root in self.aliases or root in self.toplevel:
            what = f"module {self.aliases[root]}" if root in self.aliases else \
                f"the file's function {root}" if root in self.toplevel else "an object"
            self.flag(Rule.PATCH, stmt, f"assigns to {ast.unparse(target)}: patches {what} (no attribute assignments)")
        elif root is not None and local is not None and root in self.module_names and root not in local:
            self.flag(Rule.GLOBAL_STATE, stmt, f"writes into module-level {root}: state kept across calls")
        elif not in_kernel and self.kind(target.value, env) == TENSOR:
            self.flag(Rule.TORCH, stmt, f"writes into tensor {ast.unparse(target.value)} on the host")

    def check_builtin_call(self, node: ast.Call, env, scope: frozenset[str]) -> None:
        """float(x), sum(x), print(x), ...: builtins that read or compute on a tensor on the host."""
        if not isinstance(node.func, ast.Name) or node.func.id in scope:
            return
        name = node.func.id
        kinds = {self.kind(a, env) for a in [*node.args, *(k.value for k in node.keywords)]}
        if name in N.HOST_READ_BUILTINS and (TENSOR in kinds or (CONTAINER in kinds
                                                                 and name not in N.CONTAINER_OK_BUILTINS)):
            self.flag(Rule.TORCH, node, f"{name}() of a tensor reads or computes on the host")

    def check_method(self, node: ast.Attribute, env) -> None:
        """`obj.attr` in host code, called or not (a bound method can be called later)."""
        name = node.attr
        if name in N.STREAM_METHODS:
            self.flag(Rule.STREAM, node, f"uses .{name}: no streams, events or synchronisation")
        elif name in N.TENSOR_COMPUTE or (name in N.TENSOR_CALLABLES and self.kind(node.value, env) == TENSOR):
            self.flag(Rule.TORCH, node, f"uses tensor method .{name} on the host: only metadata and views "
                                        f"({', '.join(sorted(TENSOR_METHODS))}); compute in a kernel")
        elif name not in HOST_VALUE_ATTRS:
            self.flag(Rule.ATTRIBUTE, node, f"reads .{name} of a value on the host: allowed are tensor metadata "
                                            "and views, dtype, device and Config fields (HOST_VALUE_ATTRS)")


def _bound_names(scope: ast.AST) -> set[str]:
    """Names a module or function binds itself (parameters, assignments, defs, imports), not
    looking into nested functions, whose names are their own."""
    names: set[str] = set()
    if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        a = scope.args
        names |= {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if x is not None}
        todo = list(scope.body) if isinstance(scope.body, list) else [scope.body]
    else:
        todo = list(scope.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue
        if isinstance(node, ast.Lambda):
            continue
        todo.extend(ast.iter_child_nodes(node))
    return names
