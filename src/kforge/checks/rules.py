"""What the static check reports: a `Finding` (line, `Rule`, message). Any finding is a rejection."""
from __future__ import annotations

import dataclasses
import enum


class Rule(str, enum.Enum):
    SYNTAX = "syntax"  # does not parse
    CONTRACT = "contract"  # no module-level forward(...)
    IMPORT = "import"  # a module outside the allow-list
    KFORGE = "kforge"  # imports kforge or calls torch.ops.kforge: the reference, or the router
    TORCH = "torch-compute"  # computes with torch (or reads tensor data) on the host
    API = "api"  # a triton API outside the allow-list (triton.language.core, testing, runtime, hooks, ...)
    FALLBACK = "fallback"  # try/except
    STREAM = "stream"  # streams, events, synchronisation
    FILESYSTEM = "filesystem"
    ENVIRONMENT = "environment"
    NETWORK = "network"
    PROCESS = "process"  # subprocesses, threads, signals, exiting
    DYNAMIC = "dynamic-code"  # eval/exec/compile/__import__/getattr/type/dunder access, generators
    PATCH = "patch"  # assigns to an attribute (of a module, a function, any object)
    GLOBAL_STATE = "global-state"  # global/nonlocal, mutable module state, mutable defaults, DOMAIN from code
    HANG = "hang"  # a loop that cannot end
    PRIVATE = "private-name"  # an attribute, or a name the file does not define, beginning with "_"
    TOPLEVEL = "top-level"  # a module-level statement other than docstring, import, constant, def
    CLASS = "class"  # a class definition (a Tensor subclass computes lazily)
    KERNEL_CALL = "kernel-call"  # a @triton.jit function called, or used as a value, outside a launch
    BUILTIN = "builtin"  # a builtin outside the allow-list (print, iter, ...), or an undefined name
    ATTRIBUTE = "attribute"  # an attribute of a value outside the allow-list
    ENCODING = "encoding"  # a coding declaration other than UTF-8 (Python would read other code)


@dataclasses.dataclass(frozen=True)
class Finding:
    rule: Rule
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: [{self.rule.value}] {self.message}"
