"""The allow-lists of the static check: which modules, torch and triton names, builtins and
attributes a candidate may use. What is not listed here is rejected.

The `triton.language` names come from Triton's own public API for the installed version
(`triton_language_names()`): its `__all__`, and the public functions of the math libraries
kernels use (`triton.language.math`, `triton.language.extra.libdevice`,
`triton.language.extra.cuda.libdevice`, whichever exist). Module re-exports are never followed:
`triton.language.core` re-exports `builtins` and `inspect` (exec, open, stack frames), and
`triton.language.math` re-exports `core` and `functools.wraps`.
"""
from __future__ import annotations

import functools
import importlib
import types

import torch

ALLOWED_IMPORTS = ("torch", "triton", "triton.language", "math", "typing", "__future__")
TL = "triton.language"
# Public math libraries for kernels; only the ones the installed Triton has are allowed.
TL_LIBRARIES = ("triton.language.math", "triton.language.extra.libdevice", "triton.language.extra.cuda.libdevice")
# Compiler internals of dtypes and tensors: nothing a kernel needs.
TL_INTERNAL_ATTRS = {"to_ir", "codegen_name", "mangle", "cache_key_part", "handle", "with_element_ty"}
# Instance attributes of tl.tensor / tl.dtype / tl.constexpr values (not visible on their classes).
TL_INSTANCE_ATTRS = {"shape", "dtype", "type", "numel", "element_ty", "value", "primitive_bitwidth",
                     "fp_mantissa_width", "int_bitwidth", "int_signedness", "name", "exponent_bias"}


@functools.cache
def _triton_language() -> tuple[frozenset[str], frozenset[str]]:
    import triton.language as tl

    names, modules = {TL}, {TL}
    for name in getattr(tl, "__all__", ()):
        if not name.startswith("_") and not isinstance(getattr(tl, name, None), types.ModuleType):
            names.add(f"{TL}.{name}")
    for library in TL_LIBRARIES:
        try:
            module = importlib.import_module(library)
        except ImportError:
            continue
        parts = library.split(".")
        modules.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
        for name in dir(module):
            value = getattr(module, name, None)
            if name.startswith("_") or isinstance(value, types.ModuleType) or not callable(value):
                continue
            if not str(getattr(value, "__module__", "")).startswith(TL):
                continue  # a re-export (typing.List, functools.wraps)
            names.add(f"{library}.{name}")
    return frozenset(names | modules), frozenset(modules)


def triton_language_names() -> frozenset[str]:
    """Every dotted path below triton.language a candidate may name: the modules themselves
    (triton.language, its math libraries and their parents) and their public non-module names."""
    return _triton_language()[0]


def triton_language_modules() -> frozenset[str]:
    """The modules among `triton_language_names()` (importable, never a value)."""
    return _triton_language()[1]


@functools.cache
def kernel_value_attrs() -> frozenset[str]:
    """Attributes a kernel may read on its values (tl tensors, dtypes, constexprs)."""
    import triton.language as tl

    classes = [tl.tensor, tl.dtype, tl.pointer_type, tl.block_type, tl.constexpr, getattr(tl, "PropagateNan", None)]
    names = {n for c in classes if c is not None for n in dir(c) if not n.startswith("_")}
    return frozenset((names | TL_INSTANCE_ATTRS) - TL_INTERNAL_ATTRS)


TRITON_ALLOWED = {"triton.jit", "triton.autotune", "triton.heuristics", "triton.Config", "triton.cdiv",
                  "triton.next_power_of_2", "triton.language", "triton.constexpr"}
TRITON_DECORATORS = {"triton.jit", "triton.autotune", "triton.heuristics"}
# Keyword arguments of the triton decorators and Config: no hooks (pre_hook, do_bench,
# prune_configs_by, launch_metadata, ...), which run host code with the launch's tensors.
TRITON_KWARGS = {
    "triton.jit": {"do_not_specialize", "do_not_specialize_on_alignment", "debug", "noinline"},
    "triton.autotune": {"configs", "key", "reset_to_zero", "restore_value", "warmup", "rep", "cache_results"},
    "triton.heuristics": set(),
    "triton.Config": {"kwargs", "num_warps", "num_stages", "num_ctas", "maxnreg"},
}
TYPING_ALLOWED = {f"typing.{n}" for n in ("Any", "Optional", "Union", "Tuple", "List", "Sequence", "Dict",
                                           "Mapping", "Callable")}

TORCH_ALLOWED = {
    "torch.empty", "torch.empty_like", "torch.empty_strided", "torch.Tensor", "torch.Size", "torch.dtype",
    "torch.device", "torch.finfo", "torch.iinfo", "torch.cuda.device", "torch.cuda.current_device",
    "torch.cuda.get_device_properties", "torch.cuda.get_device_capability", "torch.cuda.is_available",
}
# dtypes, memory formats and layouts (torch.float32, torch.contiguous_format, torch.strided)
TORCH_CONSTANTS = {f"torch.{name}" for name in dir(torch)
                   if isinstance(getattr(torch, name, None), (torch.dtype, torch.memory_format, torch.layout))}
TORCH_ALLOC = {"torch.empty", "torch.empty_like", "torch.empty_strided"}  # calls that return a tensor

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
# Attributes host code may read on any value: the tensor ones, views (.T, .mT), torch.device
# (.type, .index), dtype and finfo fields, device properties, Config fields, and read-only
# methods of Python's own containers and strings (.format is not one: "{0.__class__}" reads
# attributes the AST never shows).
HOST_VALUE_ATTRS = TENSOR_METHODS | TENSOR_SCALAR_ATTRS | {
    "T", "mT", "type", "index", "is_signed", "bits", "eps", "tiny", "resolution", "smallest_normal",
    "multi_processor_count", "name", "major", "minor", "total_memory", "L2_cache_size", "warp_size",
    "max_threads_per_multi_processor", "regs_per_multiprocessor", "kwargs", "num_warps", "num_stages", "num_ctas",
    "get", "items", "keys", "values", "count", "append", "extend", "startswith", "endswith", "join", "split",
    "strip", "lower", "upper", "replace", "bit_length", "real", "imag", "is_integer",
}
STREAM_NAMES = {"Stream", "stream", "Event", "synchronize", "current_stream", "default_stream", "set_stream",
                "ExternalStream", "StreamContext", "graph", "CUDAGraph", "graphs", "streams"}
STREAM_METHODS = {"synchronize", "wait_stream", "wait_event", "record_stream", "record_event"}

# Tensor methods (callables, not properties like .shape or .T) that host code may not touch, on
# any object: a tensor can hide in a container or come from an unknown call. Names that are also
# methods of Python's own types (.add, .index, .split, .sort, .values) and `.type` (torch.device
# has one) count only on known tensors.
TENSOR_CALLABLES = {name for name in dir(torch.Tensor)
                    if not name.startswith("_") and callable(getattr(torch.Tensor, name))} - TENSOR_METHODS
_PY_METHODS = set().union(*(dir(t) for t in (str, bytes, list, tuple, dict, set, int, float)))
TENSOR_COMPUTE = TENSOR_CALLABLES - _PY_METHODS - {"type"}

# Builtins host code may use; every other builtin is rejected (type, object, super, vars, id,
# callable, hasattr, dir, print, iter, next, ...).
HOST_BUILTINS = {"range", "len", "isinstance", "min", "max", "abs", "int", "float", "bool", "tuple", "list", "dict",
                 "set", "frozenset", "enumerate", "zip", "reversed", "sorted", "sum", "any", "all", "round", "divmod",
                 "pow", "str", "slice", "map", "filter", "True", "False", "None", "ValueError", "TypeError",
                 "RuntimeError", "NotImplementedError", "AssertionError", "IndexError", "KeyError"}
KERNEL_BUILTINS = {"range", "len", "min", "max", "abs", "int", "float", "bool", "isinstance", "tuple", "zip",
                   "enumerate", "True", "False", "None"}
# Builtins whose use says what the candidate is after (a more precise rule than "builtin").
BUILTIN_RULES = {
    "open": "filesystem",
    **dict.fromkeys(("exit", "quit", "input", "breakpoint"), "process"),
    **dict.fromkeys(("eval", "exec", "compile", "__import__", "globals", "locals", "vars", "getattr", "setattr",
                     "delattr", "memoryview", "type", "object", "super", "dir", "id", "hasattr", "callable",
                     "classmethod", "staticmethod", "property", "issubclass", "help"), "dynamic-code"),
}
# Builtins that read a tensor's data on the host (float(x), sum(x), ...).
HOST_READ_BUILTINS = {"float", "int", "bool", "complex", "str", "repr", "format", "print", "list", "tuple", "set",
                      "sum", "min", "max", "abs", "round", "sorted", "any", "all", "iter", "next", "map",
                      "filter", "enumerate", "zip", "divmod", "pow", "hash", "bytes"}
CONTAINER_OK_BUILTINS = {"list", "tuple", "enumerate", "zip", "iter", "len", "isinstance", "reversed"}
# Calls allowed in module-level constants (pure functions of constants).
CONSTANT_CALLS = {"min", "max", "abs", "int", "float", "round", "len", "tuple", "frozenset", "bool", "str", "range",
                  "divmod", "pow", "triton.cdiv", "triton.next_power_of_2", "triton.language.constexpr"}
DATA_NAMES = ("DOMAIN", "SEARCH_SPACE")  # module-level data kforge reads; the only mutable containers

# Modules whose import says what the candidate is after; anything else not allowed is IMPORT.
MODULE_RULES = {
    **dict.fromkeys(("subprocess", "multiprocessing", "signal", "threading", "_thread", "concurrent",
                     "asyncio", "sched", "pty"), "process"),
    **dict.fromkeys(("socket", "ssl", "urllib", "http", "requests", "httpx", "aiohttp", "ftplib", "smtplib",
                     "xmlrpc", "websocket", "websockets"), "network"),
    **dict.fromkeys(("pathlib", "io", "shutil", "tempfile", "glob", "fileinput", "shelve", "sqlite3", "zipfile",
                     "tarfile", "mmap", "fcntl"), "filesystem"),
    **dict.fromkeys(("importlib", "ctypes", "cffi", "builtins", "inspect", "gc", "types", "code", "codeop",
                     "marshal", "pickle", "runpy", "pkgutil", "linecache", "sys", "dis", "operator"), "dynamic-code"),
    "kforge": "kforge",
}
OS_ENVIRONMENT = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}
OS_PROCESS_PREFIXES = ("system", "popen", "spawn", "exec", "fork", "kill", "_exit", "abort", "posix_spawn",
                       "startfile", "wait")
