"""Reading a Dynamo FX graph in one vocabulary, whatever spelling the model used.

Dynamo hands a backend torch-level nodes: `x.pow(2)` is a `call_method`, `torch.pow(x, 2)` a
`call_function` on `torch.pow`, `x ** 2` one on `operator.pow`, and `F.softmax` numbers its
arguments differently from `torch.softmax`. `canon(node)` names the operation ("pow", "mean",
"softmax", ...) and `arg(node, "dim")` reads an argument by name, so patterns are written once.
Tensor facts (dtype, shape, device) come from the fake tensor Dynamo stores on every node.
"""
from __future__ import annotations

import operator
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch.fx import Node

_MISSING = object()

# Canonical name -> parameter names after the tensor (`input` is always first).
_PARAMS: dict[str, tuple[str, ...]] = {
    "add": ("input", "other", "alpha"),
    "sub": ("input", "other", "alpha"),
    "mul": ("input", "other"),
    "div": ("input", "other", "rounding_mode"),
    "pow": ("input", "exponent"),
    "square": ("input",),
    "neg": ("input",),
    "rsqrt": ("input",),
    "sqrt": ("input",),
    "cos": ("input",),
    "sin": ("input",),
    "mean": ("input", "dim", "keepdim", "dtype"),
    "sum": ("input", "dim", "keepdim", "dtype"),
    "softmax": ("input", "dim", "dtype"),
    "topk": ("input", "k", "dim", "largest", "sorted"),
    "silu": ("input", "inplace"),
    "chunk": ("input", "chunks", "dim"),
    "split": ("input", "split_size_or_sections", "dim"),
    "getitem": ("input", "index"),
    "cat": ("tensors", "dim"),
    "unsqueeze": ("input", "dim"),
    "rms_norm": ("input", "normalized_shape", "weight", "eps"),
    "layer_norm": ("input", "normalized_shape", "weight", "bias", "eps"),
    "cross_entropy": ("input", "target", "weight", "size_average", "ignore_index", "reduce", "reduction",
                      "label_smoothing"),
    "cast": ("input",),
}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "add": {"alpha": 1}, "sub": {"alpha": 1}, "div": {"rounding_mode": None},
    "mean": {"dim": None, "keepdim": False, "dtype": None}, "sum": {"dim": None, "keepdim": False, "dtype": None},
    "softmax": {"dim": None, "dtype": None}, "topk": {"dim": -1, "largest": True, "sorted": True},
    "silu": {"inplace": False}, "chunk": {"dim": 0}, "split": {"dim": 0}, "cat": {"dim": 0},
    "rms_norm": {"weight": None, "eps": None}, "layer_norm": {"weight": None, "bias": None, "eps": 1e-5},
    "cross_entropy": {"weight": None, "size_average": None, "ignore_index": -100, "reduce": None,
                      "reduction": "mean", "label_smoothing": 0.0},
}
# Targets whose positional order differs from the canonical one.
_POSITIONAL: dict[Any, tuple[str, ...]] = {
    F.softmax: ("input", "dim", "_stacklevel", "dtype"),
    F.silu: ("input", "inplace"),
}
_FUNCTIONS: dict[Any, str] = {
    operator.add: "add", operator.iadd: "add", torch.add: "add",
    operator.sub: "sub", operator.isub: "sub", torch.sub: "sub",
    operator.mul: "mul", operator.imul: "mul", torch.mul: "mul",
    operator.truediv: "div", operator.itruediv: "div", torch.div: "div", torch.true_divide: "div",
    operator.pow: "pow", torch.pow: "pow", torch.square: "square",
    operator.neg: "neg", torch.neg: "neg", torch.negative: "neg",
    torch.rsqrt: "rsqrt", torch.sqrt: "sqrt", torch.cos: "cos", torch.sin: "sin",
    torch.mean: "mean", torch.sum: "sum",
    torch.softmax: "softmax", F.softmax: "softmax", torch.special.softmax: "softmax",
    torch.topk: "topk", F.silu: "silu",
    torch.chunk: "chunk", torch.split: "split", operator.getitem: "getitem",
    torch.cat: "cat", torch.concat: "cat", torch.concatenate: "cat", torch.unsqueeze: "unsqueeze",
    torch.rms_norm: "rms_norm", F.rms_norm: "rms_norm",
    torch.layer_norm: "layer_norm", F.layer_norm: "layer_norm",
    F.cross_entropy: "cross_entropy",
}
_METHODS: dict[str, str] = {
    "add": "add", "sub": "sub", "mul": "mul", "div": "div", "true_divide": "div", "pow": "pow",
    "square": "square", "neg": "neg", "negative": "neg", "rsqrt": "rsqrt", "sqrt": "sqrt", "cos": "cos", "sin": "sin",
    "mean": "mean", "sum": "sum", "softmax": "softmax", "topk": "topk", "chunk": "chunk", "split": "split",
    "unsqueeze": "unsqueeze",
    # Pure dtype conversions; `cast_source` checks from the fake tensors that nothing else changed.
    "to": "cast", "float": "cast", "half": "cast", "bfloat16": "cast", "double": "cast", "type_as": "cast",
    "type": "cast",
}


def define(name: str, params: tuple[str, ...], *, functions: tuple[Any, ...] = (), methods: tuple[str, ...] = (),
           defaults: dict[str, Any] | None = None) -> None:
    """Add operation `name` to the vocabulary: what a pattern module reads that the tables above
    lack (a new op's pattern declares it beside the pattern instead of editing this file).
    `params` as `_PARAMS` lists them (`input` first), the torch functions and Tensor method names
    that spell it, and the defaults of its optional parameters. The tables above win: a name or a
    spelling they already hold is refused, so a pattern cannot change another's reading."""
    taken = [f for f in functions if f in _FUNCTIONS] + [m for m in methods if m in _METHODS]
    if name in _PARAMS or taken or not params or params[0] != "input":
        raise ValueError(f"compile vocabulary: cannot define {name!r} with params {params} "
                         f"(already defined, or spellings already taken: {taken})")
    _PARAMS[name] = tuple(params)
    _DEFAULTS[name] = dict(defaults or {})
    _FUNCTIONS.update({f: name for f in functions})
    _METHODS.update({m: name for m in methods})


def canon(node: Any) -> str | None:
    """The operation `node` performs in kforge's vocabulary, or None (not a node, or unknown)."""
    if not isinstance(node, Node):
        return None
    if node.op == "call_function":
        try:
            return _FUNCTIONS.get(node.target)
        except TypeError:  # unhashable target
            return None
    if node.op == "call_method":
        return _METHODS.get(node.target)
    return None


def arg(node: Node, name: str, default: Any = _MISSING) -> Any:
    """Argument `name` of `node` under its canonical signature (positional or keyword)."""
    op = canon(node)
    positional = _POSITIONAL.get(node.target, _PARAMS[op]) if node.op == "call_function" else _PARAMS[op]
    if name in positional:
        i = positional.index(name)
        if i < len(node.args):
            return node.args[i]
    aliases = ("input", "self") if name == "input" else (name,)
    for alias in aliases:
        if alias in node.kwargs:
            return node.kwargs[alias]
    if default is not _MISSING:
        return default
    return _DEFAULTS.get(op, {}).get(name)


def val(node: Any):
    """The fake tensor (or tuple of them) Dynamo recorded for `node`; None for constants."""
    if not isinstance(node, Node):
        return None
    return node.meta.get("example_value", node.meta.get("val"))


def dtype(node: Any) -> torch.dtype | None:
    v = val(node)
    return v.dtype if isinstance(v, torch.Tensor) else None


def is_static(t: Any) -> bool:
    """Whether a fake tensor's sizes and strides are plain ints (no symbolic dims)."""
    return all(type(s) is int for s in (*t.shape, *t.stride()))


def last_dim(d: Any, ndim: int) -> bool:
    """Whether `d` (an int, or a one-element list or tuple) names the last of `ndim` dims."""
    if isinstance(d, (list, tuple)) and len(d) == 1:
        d = d[0]
    return type(d) is int and ndim > 0 and d % ndim == ndim - 1


def cast_source(node: Any) -> Node | None:
    """For a pure dtype conversion (same shape, same device, floating result), its input."""
    if canon(node) != "cast" or not node.args or not isinstance(node.args[0], Node):
        return None
    src, out = val(node.args[0]), val(node)
    if not isinstance(src, torch.Tensor) or not isinstance(out, torch.Tensor):
        return None
    if src.shape != out.shape or src.device != out.device or not out.dtype.is_floating_point:
        return None
    return node.args[0]


def strip_casts(node: Any) -> tuple[Any, list[Node]]:
    """Follow dtype conversions up from `node`: (the first non-cast node, the casts passed)."""
    casts = []
    while (src := cast_source(node)) is not None:
        casts.append(node)
        node = src
    return node, casts


def operands(node: Node) -> tuple[Any, Any]:
    """The two operands of a binary node (add, mul, div, ...)."""
    return arg(node, "input"), arg(node, "other")


def the_other(node: Node, one: Any) -> Any:
    """The operand of a commutative binary `node` that is not `one` (None if `one` is neither)."""
    a, b = operands(node)
    if a is one:
        return b
    if b is one:
        return a
    return None


def only_user(node: Node) -> Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.*)')


def module_path(node: Node) -> str:
    """The submodule that produced `node` ("layers.0.input_layernorm"), "" at the top level."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = str(list(stack.values())[-1][0])
    return re.sub(r"^L\['self'\]\.?", "", path)


def where(node: Node) -> str:
    """`[module] file.py:LINE in fn: source line` of the model code that produced `node`."""
    module = module_path(node)
    prefix = f"[{module}] " if module else ""
    return prefix + _source_line(node)


def _source_line(node: Node) -> str:
    frames = _FRAME.findall(node.meta.get("stack_trace") or "")
    # The model's own line, not torch's (F.rms_norm's body, nn.Module's _call_impl).
    frames = [f for f in frames if "/torch/" not in f[0]] or frames
    if not frames:
        return f"graph node {node.name}"
    path, line, fn, code = frames[-1]
    return f"{path.rsplit('/', 1)[-1]}:{line} in {fn}: {code.strip()}"
