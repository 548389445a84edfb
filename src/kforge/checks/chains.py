"""What a dotted name may refer to (part of `kforge.checks.static`): imports, and chains rooted
at an imported module (torch.nn.functional.softmax, tl.core.builtins.exec), against the
allow-lists of `kforge.checks.names`."""
from __future__ import annotations

import ast

from kforge.checks import names as N
from kforge.checks.names import ALLOWED_IMPORTS, HOST_VALUE_ATTRS, TORCH_ALLOWED, TRITON_ALLOWED
from kforge.checks.rules import Rule


class ChainRules:
    """Mixed into the checker: needs tree, aliases, flag() and decorators."""

    def alias(self, name: str, path: str, node: ast.AST) -> None:
        if self.aliases.get(name, path) != path:
            self.flag(Rule.PATCH, node, f"imports {path} as {name}, which already names {self.aliases[name]}")
        self.aliases[name] = path

    def collect_imports(self) -> None:
        """Every import; the names they bind stay what they were imported as: imports are at
        module level only, and nothing else may bind those names (`math = torch.Tensor` would
        make `math.softmax` look like the math module)."""
        top_level = set(self.tree.body)
        for node in ast.walk(self.tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node not in top_level:
                self.flag(Rule.IMPORT, node, "imports inside a function or block: imports are at module level only")
            if isinstance(node, ast.Import):
                for a in node.names:
                    self.check_module(a.name, node)
                    self.alias(a.asname or a.name.split(".")[0], a.name if a.asname else a.name.split(".")[0], node)
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    self.flag(Rule.IMPORT, node, f"relative import from {'.' * node.level}{module}")
                    continue
                if module == "__future__":
                    continue
                self.check_module(module, node)
                for a in node.names:
                    if a.name == "*":
                        self.flag(Rule.IMPORT, node, f"star import from {module}")
                        continue
                    full = f"{module}.{a.name}"
                    if a.name.startswith("_"):
                        self.flag(Rule.PRIVATE, node, f"imports {full}: no private names")
                    self.alias(a.asname or a.name, full, node)
                    if self.module_allowed(module) and not self.module_allowed(full):
                        self.check_chain(full, node, in_kernel=False, verb="imports")

    def check_rebinding(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                name = node.id
            elif isinstance(node, ast.arg):
                name = node.arg
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = node.name
            else:
                continue
            if name in self.aliases:
                self.flag(Rule.PATCH, node, f"binds {name}, an imported name ({self.aliases[name]}): imported "
                                            "names keep what they were imported as")

    @staticmethod
    def module_allowed(module: str) -> bool:
        if module.startswith("triton.language"):
            return module in N.triton_language_modules()
        return module in ALLOWED_IMPORTS

    def check_module(self, module: str, node: ast.AST) -> None:
        if any(part.startswith("_") for part in module.split(".")) and module != "__future__":
            self.flag(Rule.PRIVATE, node, f"imports {module}: no private modules")
        if self.module_allowed(module):
            return
        top = module.split(".")[0]
        if top == "torch":
            self.check_chain(module, node, in_kernel=False, verb="imports")
        elif top == "triton":
            self.flag(Rule.API, node, f"imports {module}: only triton, triton.language and its math libraries "
                                      f"({', '.join(sorted(N.triton_language_modules()))}) are allowed")
        elif top == "os":
            self.flag(Rule.IMPORT, node, f"imports {module} (file system, environment and processes)")
        elif top in N.MODULE_RULES:
            self.flag(Rule(N.MODULE_RULES[top]), node, f"imports {module}")
        else:
            self.flag(Rule.IMPORT, node, f"imports {module}: allowed imports are {', '.join(ALLOWED_IMPORTS)}")

    def check_chain(self, path: str, node: ast.AST, in_kernel: bool, verb: str = "uses") -> None:
        """`path`: a dotted name (maximal chain) the code refers to, e.g. torch.nn.functional.softmax."""
        parts = path.split(".")
        top = parts[0]
        if top == "kforge" or path.startswith("torch.ops.kforge"):
            self.flag(Rule.KFORGE, node, f"{verb} {path}: a candidate may not call the reference or kforge")
        elif top == "torch":
            if in_kernel:
                self.flag(Rule.TORCH, node, f"{verb} {path} inside a kernel: kernels use triton.language only")
            elif len(parts) >= 2 and (parts[-1] in N.STREAM_NAMES and parts[1] in ("cuda", "Stream", "Event")
                                      or parts[1] in ("Stream", "Event")):
                self.flag(Rule.STREAM, node, f"{verb} {path}: no streams, events or synchronisation")
            elif ".".join(parts[:2]) in N.TORCH_CONSTANTS and all(p in HOST_VALUE_ATTRS for p in parts[2:]):
                pass
            elif not (path in TORCH_ALLOWED or path == "torch"):
                self.flag(Rule.TORCH, node, f"{verb} {path}: host code may only allocate (torch.empty, "
                                            "empty_like, empty_strided) and launch kernels")
        elif path.startswith("triton.language"):
            self.check_triton_language(path, node, verb)
        elif top == "triton":
            if not (path in TRITON_ALLOWED or path == "triton"):
                self.flag(Rule.API, node, f"{verb} {path}: allowed are {', '.join(sorted(TRITON_ALLOWED))}")
            elif path in N.TRITON_DECORATORS and node not in self.decorators:
                self.flag(Rule.API, node, f"{verb} {path} other than as a decorator")
        elif top == "typing":
            if len(parts) > 1 and path not in N.TYPING_ALLOWED:
                self.flag(Rule.API, node, f"{verb} {path}: from typing only {', '.join(sorted(N.TYPING_ALLOWED))}")
        elif top == "os":
            name = parts[1] if len(parts) > 1 else ""
            if name in N.OS_ENVIRONMENT:
                self.flag(Rule.ENVIRONMENT, node, f"{verb} {path}: reads or writes the environment")
            elif name.startswith(N.OS_PROCESS_PREFIXES):
                self.flag(Rule.PROCESS, node, f"{verb} {path}: processes")
            else:
                self.flag(Rule.FILESYSTEM, node, f"{verb} {path}: the file system")
        elif top == "sys" and path.startswith("sys.exit"):
            self.flag(Rule.PROCESS, node, f"{verb} {path}")
        elif top in N.MODULE_RULES:
            self.flag(Rule(N.MODULE_RULES[top]), node, f"{verb} {path}")
        elif top not in ALLOWED_IMPORTS:
            self.flag(Rule.IMPORT, node, f"{verb} {path}")

    def check_triton_language(self, path: str, node: ast.AST, verb: str) -> None:
        """Only the public names of the installed Triton's triton.language (names.py); below a
        name that is a value (tl.float32), only its dtype / tensor attributes."""
        allowed, modules = N.triton_language_names(), N.triton_language_modules()
        parts = path.split(".")
        for i in range(len(parts), 1, -1):
            prefix = ".".join(parts[:i])
            if prefix in allowed:
                rest = parts[i:]
                if not rest:
                    return
                if prefix not in modules and all(p in N.kernel_value_attrs() for p in rest):
                    return
                break
        self.flag(Rule.API, node, f"{verb} {path}: not a public name of triton.language or its math libraries "
                                  "(triton.language.core and other internals are out)")
