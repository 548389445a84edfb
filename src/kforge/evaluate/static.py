"""Static checks on a candidate's source, run before it is ever imported (on the AST, never regex).

    findings = check_source(path.read_text(), spec)   # [] when the source may be run

A candidate must compute in its Triton kernels. Host code (everything outside `@triton.jit`
functions, module level included) may only allocate, reshape and launch:
  - imports: torch, triton, triton.language (and its submodules), math, typing, __future__.
    Nothing else (functools is out too: `lru_cache` on `forward` memoizes by tensor identity);
  - torch: `torch.empty`, `empty_like`, `empty_strided`, dtypes, `torch.Tensor`/`Size`/`dtype`/
    `device`, `finfo`/`iinfo`, and the read-only `torch.cuda.device`, `current_device`,
    `get_device_properties`, `get_device_capability`, `is_available`;
  - tensor methods: metadata and views (`view`, `reshape`, `contiguous`, `stride`, `size`,
    `numel`, `dim`, `is_contiguous`, `element_size`, `data_ptr`, `new_empty`, ... see
    TENSOR_METHODS); no arithmetic, comparison, indexing, iteration or truth test of a tensor
    (a small flow analysis knows which names hold tensors: the op's tensor arguments, what the
    allowed calls return, and what helper functions pass on and return);
  - triton: `jit`, `autotune`, `heuristics`, `Config`, `cdiv`, `next_power_of_2`;
  - Python arithmetic on ints, kernel launches `kernel[grid](...)`, helper functions.
Kernels may use `triton.language` freely but never torch. Everywhere: no try/except (a fallback
hides a broken kernel), streams or events, file system, environment, network, processes or
threads, eval/exec/getattr/dunder introspection, `global`, constant-true `while` loops, and no
assignment to attributes of an imported module or of the file's own functions (patching
torch.allclose, time.perf_counter, a kernel's launcher). The checks are deliberately strict: a
finding is a rejection, and an honest kernel file never needs any of these.
"""
from __future__ import annotations

import ast
import dataclasses
import enum
from typing import Iterator

import torch


class Rule(str, enum.Enum):
    SYNTAX = "syntax"  # does not parse
    CONTRACT = "contract"  # no module-level forward(...)
    IMPORT = "import"  # a module outside the allow-list
    KFORGE = "kforge"  # imports kforge or calls torch.ops.kforge: the reference, or the router
    TORCH = "torch-compute"  # computes with torch (or reads tensor data) on the host
    API = "api"  # a triton API outside the allow-list (its testing, runtime, knobs, ...)
    FALLBACK = "fallback"  # try/except
    STREAM = "stream"  # streams, events, synchronisation
    FILESYSTEM = "filesystem"
    ENVIRONMENT = "environment"
    NETWORK = "network"
    PROCESS = "process"  # subprocesses, threads, signals, exiting
    DYNAMIC = "dynamic-code"  # eval/exec/compile/__import__/getattr/globals/dunder access
    PATCH = "patch"  # assigns to an attribute of a module or of the file's own functions
    GLOBAL_STATE = "global-state"  # global / nonlocal
    HANG = "hang"  # a loop that cannot end


@dataclasses.dataclass(frozen=True)
class Finding:
    rule: Rule
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: [{self.rule.value}] {self.message}"


ALLOWED_IMPORTS = ("torch", "triton", "triton.language", "math", "typing", "__future__")
ALLOWED_PREFIXES = ("triton.language.",)  # its submodules: extra.libdevice, math, ...

# Modules whose import says what the candidate is after; anything else not allowed is IMPORT.
MODULE_RULES = {
    **dict.fromkeys(("subprocess", "multiprocessing", "signal", "threading", "_thread", "concurrent",
                     "asyncio", "sched", "pty"), Rule.PROCESS),
    **dict.fromkeys(("socket", "ssl", "urllib", "http", "requests", "httpx", "aiohttp", "ftplib", "smtplib",
                     "xmlrpc", "websocket", "websockets"), Rule.NETWORK),
    **dict.fromkeys(("pathlib", "io", "shutil", "tempfile", "glob", "fileinput", "shelve", "sqlite3", "zipfile",
                     "tarfile", "mmap", "fcntl"), Rule.FILESYSTEM),
    **dict.fromkeys(("importlib", "ctypes", "cffi", "builtins", "inspect", "gc", "types", "code", "codeop",
                     "marshal", "pickle", "runpy", "pkgutil", "linecache", "sys", "dis", "operator"), Rule.DYNAMIC),
    "kforge": Rule.KFORGE,
}
OS_ENVIRONMENT = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}
OS_PROCESS_PREFIXES = ("system", "popen", "spawn", "exec", "fork", "kill", "_exit", "abort", "posix_spawn",
                       "startfile", "wait")

TORCH_ALLOWED = {
    "torch.empty", "torch.empty_like", "torch.empty_strided", "torch.Tensor", "torch.Size", "torch.dtype",
    "torch.device", "torch.finfo", "torch.iinfo", "torch.cuda.device", "torch.cuda.current_device",
    "torch.cuda.get_device_properties", "torch.cuda.get_device_capability", "torch.cuda.is_available",
}
# dtypes, memory formats and layouts (torch.float32, torch.contiguous_format, torch.strided)
TORCH_CONSTANTS = {f"torch.{name}" for name in dir(torch)
                   if isinstance(getattr(torch, name, None), (torch.dtype, torch.memory_format, torch.layout))}
TORCH_ALLOC = {"torch.empty", "torch.empty_like", "torch.empty_strided"}  # calls that return a tensor
STREAM_NAMES = {"Stream", "stream", "Event", "synchronize", "current_stream", "default_stream", "set_stream",
                "ExternalStream", "StreamContext", "graph", "CUDAGraph", "graphs", "streams", "_sleep"}
STREAM_METHODS = {"synchronize", "wait_stream", "wait_event", "record_stream", "record_event"}
TRITON_ALLOWED = {"triton.jit", "triton.autotune", "triton.heuristics", "triton.Config", "triton.cdiv",
                  "triton.next_power_of_2", "triton.language", "triton.constexpr"}

# Tensor methods host code may call: metadata, and views that compute nothing (reshape and
# contiguous copy a non-contiguous input, which kernels taking strides avoid anyway).
TENSOR_METADATA = {"stride", "size", "numel", "nelement", "dim", "ndimension", "is_contiguous", "element_size",
                   "data_ptr", "storage_offset", "get_device", "is_floating_point", "is_complex"}
TENSOR_VIEWS = {"view", "reshape", "contiguous", "new_empty", "new_empty_strided", "unsqueeze", "squeeze",
                "flatten", "view_as", "reshape_as", "expand", "expand_as", "t", "transpose", "permute"}
TENSOR_METHODS = TENSOR_METADATA | TENSOR_VIEWS
# Attributes of a tensor that are not tensors themselves.
TENSOR_SCALAR_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "is_cpu", "layout", "requires_grad",
                       "itemsize", "nbytes", "is_leaf", "is_sparse", "is_quantized", "is_meta"}
# Tensor methods (callables, not properties like .shape or .T) that host code may not touch, on
# any object: a tensor can hide in a container or come from an unknown call. Names that are also
# methods of Python's own types (.add, .index, .split, .sort, .values) and `.type` (torch.device
# has one) count only on known tensors.
_TENSOR_CALLABLES = {name for name in dir(torch.Tensor)
                     if not name.startswith("_") and callable(getattr(torch.Tensor, name))} - TENSOR_METHODS
_PY_METHODS = set().union(*(dir(t) for t in (str, bytes, list, tuple, dict, set, int, float)))
TENSOR_COMPUTE = _TENSOR_CALLABLES - _PY_METHODS - {"type"}

BUILTIN_RULES = {
    "open": Rule.FILESYSTEM,
    **dict.fromkeys(("exit", "quit", "input", "breakpoint"), Rule.PROCESS),
    **dict.fromkeys(("eval", "exec", "compile", "__import__", "globals", "locals", "vars", "getattr", "setattr",
                     "delattr", "memoryview"), Rule.DYNAMIC),
}
# Builtins that read a tensor's data on the host (float(x), sum(x), print(x), ...).
HOST_READ_BUILTINS = {"float", "int", "bool", "complex", "str", "repr", "format", "print", "list", "tuple", "set",
                      "sum", "min", "max", "abs", "round", "sorted", "any", "all", "iter", "next", "map",
                      "filter", "enumerate", "zip", "divmod", "pow", "hash", "bytes"}
CONTAINER_OK_BUILTINS = {"list", "tuple", "enumerate", "zip", "iter", "len", "isinstance", "reversed"}
ALLOWED_DUNDER_NAMES = {"__name__"}

TENSOR, CONTAINER = "tensor", "container"  # what the flow analysis knows a value to be


def check_source(source: str, spec=None) -> list[Finding]:
    """Findings that bar `source` (a candidate file's text) from being run, in line order; [] when
    none. `spec`, the op's OpSpec, says which of forward's parameters are tensors (without it,
    every parameter without a default is taken for one)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError) as exc:
        return [Finding(Rule.SYNTAX, getattr(exc, "lineno", None) or 0, f"does not parse: {exc}")]
    _mark_parents(tree)
    checker = _Checker(tree, spec)
    checker.run()
    unique = {(f.line, f.rule, f.message): f for f in checker.findings}
    return [unique[k] for k in sorted(unique)]


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


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _functions(tree: ast.Module) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


class _Checker:
    def __init__(self, tree: ast.Module, spec):
        self.tree = tree
        self.spec = spec
        self.findings: list[Finding] = []
        self.aliases: dict[str, str] = {}  # local name -> dotted module path it was imported as
        self.toplevel = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        self.kernels: set[ast.AST] = set()
        self.params: dict[str, dict[str, str]] = {}  # host function -> its parameters known to hold tensors
        self.returns: dict[str, str] = {}  # host function -> what it returns, when tensors
        self.module_env: dict[str, str] = {}
        self.envs: dict[ast.AST, dict[str, str]] = {}  # host function node -> names known to hold tensors

    def flag(self, rule: Rule, node: ast.AST, message: str) -> None:
        self.findings.append(Finding(rule, getattr(node, "lineno", 0), message))

    # -- passes ---------------------------------------------------------------------------------
    def run(self) -> None:
        self.collect_imports()
        self.kernels = {f for f in _functions(self.tree) if self.is_kernel(f)}
        forward = self.toplevel.get("forward")
        if forward is None:
            self.flag(Rule.CONTRACT, self.tree, "defines no module-level forward(...)")
        elif forward in self.kernels:
            self.flag(Rule.CONTRACT, forward, "forward must be a host function that launches kernels, not a kernel")
        self.infer_types(forward)
        self.visit(self.tree, False, self.module_env, frozenset(_bound_names(self.tree)))

    def collect_imports(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    self.check_module(a.name, node)
                    if a.asname:
                        self.aliases[a.asname] = a.name
                    else:
                        top = a.name.split(".")[0]
                        self.aliases[top] = top
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    self.flag(Rule.IMPORT, node, f"relative import from {'.' * node.level}{module}")
                    continue
                self.check_module(module, node)
                for a in node.names:
                    if a.name == "*":
                        self.flag(Rule.IMPORT, node, f"star import from {module}")
                        continue
                    full = f"{module}.{a.name}"
                    self.aliases[a.asname or a.name] = full
                    if self.module_allowed(module) and not self.module_allowed(full):
                        self.check_chain(full, node, in_kernel=False, verb="imports")

    @staticmethod
    def module_allowed(module: str) -> bool:
        return module in ALLOWED_IMPORTS or module.startswith(ALLOWED_PREFIXES)

    def check_module(self, module: str, node: ast.AST) -> None:
        if self.module_allowed(module):
            return
        top = module.split(".")[0]
        if top == "torch":
            self.check_chain(module, node, in_kernel=False, verb="imports")
        elif top == "triton":
            self.flag(Rule.API, node, f"imports {module}: only triton and triton.language are allowed")
        elif top == "os":
            self.flag(Rule.IMPORT, node, f"imports {module} (file system, environment and processes)")
        elif top in MODULE_RULES:
            self.flag(MODULE_RULES[top], node, f"imports {module}")
        else:
            self.flag(Rule.IMPORT, node, f"imports {module}: allowed imports are {', '.join(ALLOWED_IMPORTS)}")

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

    # -- flow analysis: which names hold tensors --------------------------------------------------
    def infer_types(self, forward) -> None:
        host = [f for f in _functions(self.tree) if f not in self.kernels]
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

    # -- the checks -----------------------------------------------------------------------------
    def visit(self, node: ast.AST, in_kernel: bool, env: dict[str, str], scope: frozenset[str]) -> None:
        """Check `node` and below. env: names known to hold tensors; scope: names the code binds
        itself where `node` is (a parameter called `input` is not the builtin)."""
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for dec in getattr(node, "decorator_list", ()):
                self.visit(dec, in_kernel, env, scope)
            inner_kernel = in_kernel or node in self.kernels
            inner_env = env if inner_kernel else {**env, **self.envs.get(node, {})}
            inner_scope = scope | _bound_names(node)
            body = node.body if isinstance(node.body, list) else [node.body]
            for child in [node.args, *body] + ([node.returns] if getattr(node, "returns", None) else []):
                self.visit(child, inner_kernel, inner_env, inner_scope)
            return
        self.check_node(node, in_kernel, env, scope)
        for child in ast.iter_child_nodes(node):
            self.visit(child, in_kernel, env, scope)

    def check_node(self, node: ast.AST, in_kernel: bool, env: dict[str, str], scope: frozenset[str]) -> None:
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
                self.check_store(target, node, in_kernel, env)
        elif isinstance(node, ast.Name):
            self.check_name(node, scope)
        elif isinstance(node, ast.Attribute):
            if _is_dunder(node.attr):
                self.flag(Rule.DYNAMIC, node, f"accesses .{node.attr}: no introspection")
            path = self.resolve(node)
            if path is None:
                if not in_kernel:
                    self.check_method(node, env)
            elif not isinstance(getattr(node, "_parent_attr", None), ast.Attribute):
                self.check_chain(path, node, in_kernel)
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

    def check_name(self, node: ast.Name, scope: frozenset[str]) -> None:
        name = node.id
        if name in BUILTIN_RULES and name not in scope:
            self.flag(BUILTIN_RULES[name], node, f"uses {name}()")
        elif _is_dunder(name) and name not in ALLOWED_DUNDER_NAMES:
            self.flag(Rule.DYNAMIC, node, f"uses {name}: no introspection")
        elif name in self.aliases and not isinstance(getattr(node, "_parent_attr", None), ast.Attribute) \
                and isinstance(node.ctx, ast.Load):
            path = self.aliases[name]
            if "." in path:  # `from torch import empty`: the name is the chain
                self.check_chain(path, node, in_kernel=False)
            else:
                self.flag(Rule.DYNAMIC, node, f"uses module {name} as a value")

    def check_chain(self, path: str, node: ast.AST, in_kernel: bool, verb: str = "uses") -> None:
        """`path`: a dotted name (maximal chain) the code refers to, e.g. torch.nn.functional.softmax."""
        parts = path.split(".")
        top = parts[0]
        if top == "kforge" or path.startswith("torch.ops.kforge"):
            self.flag(Rule.KFORGE, node, f"{verb} {path}: a candidate may not call the reference or kforge")
        elif top == "torch":
            if in_kernel:
                self.flag(Rule.TORCH, node, f"{verb} {path} inside a kernel: kernels use triton.language only")
            elif len(parts) >= 2 and (parts[-1] in STREAM_NAMES and parts[1] in ("cuda", "Stream", "Event")
                                      or parts[1] in ("Stream", "Event")):
                self.flag(Rule.STREAM, node, f"{verb} {path}: no streams, events or synchronisation")
            elif not (path in TORCH_ALLOWED or path == "torch" or ".".join(parts[:2]) in TORCH_CONSTANTS):
                self.flag(Rule.TORCH, node, f"{verb} {path}: host code may only allocate (torch.empty, "
                                            "empty_like, empty_strided) and launch kernels")
        elif top == "triton":
            if not (path in TRITON_ALLOWED or path == "triton" or path.startswith("triton.language.")):
                self.flag(Rule.API, node, f"{verb} {path}: allowed are {', '.join(sorted(TRITON_ALLOWED))}")
        elif top == "os":
            name = parts[1] if len(parts) > 1 else ""
            if name in OS_ENVIRONMENT:
                self.flag(Rule.ENVIRONMENT, node, f"{verb} {path}: reads or writes the environment")
            elif name.startswith(OS_PROCESS_PREFIXES):
                self.flag(Rule.PROCESS, node, f"{verb} {path}: processes")
            else:
                self.flag(Rule.FILESYSTEM, node, f"{verb} {path}: the file system")
        elif top == "sys" and path.startswith("sys.exit"):
            self.flag(Rule.PROCESS, node, f"{verb} {path}")
        elif top in MODULE_RULES:
            self.flag(MODULE_RULES[top], node, f"{verb} {path}")
        elif not self.module_allowed(top):
            self.flag(Rule.IMPORT, node, f"{verb} {path}")

    def check_store(self, target: ast.AST, stmt: ast.AST, in_kernel: bool, env: dict[str, str]) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                self.check_store(t, stmt, in_kernel, env)
            return
        if isinstance(target, ast.Starred):
            self.check_store(target.value, stmt, in_kernel, env)
            return
        if not isinstance(target, (ast.Attribute, ast.Subscript)):
            return
        root = _root_name(target)
        if root in self.aliases:
            self.flag(Rule.PATCH, stmt, f"assigns to {ast.unparse(target)}: patches module {self.aliases[root]}")
        elif root in self.toplevel:
            self.flag(Rule.PATCH, stmt, f"assigns to {ast.unparse(target)}: patches the file's function {root}")
        elif not in_kernel and isinstance(target, ast.Subscript) and self.kind(target.value, env) == TENSOR:
            self.flag(Rule.TORCH, stmt, f"writes into tensor {ast.unparse(target.value)} on the host")

    def check_builtin_call(self, node: ast.Call, env: dict[str, str], scope: frozenset[str]) -> None:
        """float(x), sum(x), print(x), ...: builtins that read or compute on a tensor on the host."""
        if not isinstance(node.func, ast.Name) or node.func.id in scope:
            return
        name = node.func.id
        kinds = {self.kind(a, env) for a in [*node.args, *(k.value for k in node.keywords)]}
        if name in HOST_READ_BUILTINS and (TENSOR in kinds or (CONTAINER in kinds and name not in CONTAINER_OK_BUILTINS)):
            self.flag(Rule.TORCH, node, f"{name}() of a tensor reads or computes on the host")

    def check_method(self, node: ast.Attribute, env: dict[str, str]) -> None:
        """`obj.method` in host code, called or not (a bound method can be called later)."""
        name = node.attr
        if name in STREAM_METHODS:
            self.flag(Rule.STREAM, node, f"uses .{name}: no streams, events or synchronisation")
        elif name in TENSOR_COMPUTE or (name in _TENSOR_CALLABLES and self.kind(node.value, env) == TENSOR):
            self.flag(Rule.TORCH, node, f"uses tensor method .{name} on the host: only metadata and views "
                                        f"({', '.join(sorted(TENSOR_METHODS))}); compute in a kernel")


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


def _mark_parents(tree: ast.AST) -> None:
    """Attribute and Name nodes learn whether they are the base of a longer attribute chain, so a
    chain is checked once, whole (torch.nn.functional.softmax, not torch.nn)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            node.value._parent_attr = node

