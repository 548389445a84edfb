"""KernelBench-style files as user ops: `class Model(nn.Module)`, `get_inputs()` and
`get_init_inputs()` (`kforge generate --spec-file FILE`).

The model is built once with torch.manual_seed(0) and its forward is the reference (parameters in
the first floating input's dtype and device); the arguments are `get_inputs()`'s, the schema is
read from them. Only the file's own shape is a valid call (`fixed_shapes`): the weights fix the
dims. `make_inputs` at other shapes maps the other inputs' dims by value (a dim equal to one of the
first input's takes its new size), which the evaluator does not ask for.
"""
from __future__ import annotations

import ast
import copy
import inspect
from pathlib import Path
from typing import Any, Callable

import torch

from kforge.ops.spec import OpSpec
from kforge.ops.user import _LOCK, NAME, UserOpError, _module_from, _write, build_spec, check_name

KERNELBENCH_NAMES = ("Model", "get_inputs", "get_init_inputs")


def kernelbench_problems(source: str) -> list[str]:
    """What a KernelBench-style source lacks, read with `ast` alone (nothing runs)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return [f"does not parse as Python: line {exc.lineno}: {exc.msg}"]
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    return [f"defines no {what}" for what in KERNELBENCH_NAMES if what not in defined]


def _arg_type(value: Any, i: int) -> str:
    if isinstance(value, torch.Tensor):
        return f"Tensor in{i}"
    if isinstance(value, bool):
        return f"bool a{i}"
    if isinstance(value, int):
        return f"int a{i}"
    if isinstance(value, float):
        return f"float a{i}"
    raise UserOpError(f"get_inputs()[{i}] is a {type(value).__name__}: only tensors, ints, floats and bools")


def kernelbench_spec(name: str, module, source: str, tolerance_scale: float = 1.0) -> OpSpec:
    missing = [n for n in KERNELBENCH_NAMES if not hasattr(module, n)]
    if missing:
        raise UserOpError(f"op {name!r}: the file defines no {', '.join(missing)}")
    def ran(what: str, fn: Callable):
        try:
            return fn()
        except Exception as exc:
            raise UserOpError(f"op {name!r}: {what} failed: {type(exc).__name__}: {exc}") from exc

    torch.manual_seed(0)
    model = ran("Model(*get_init_inputs())", lambda: module.Model(*module.get_init_inputs()).eval())
    template = ran("get_inputs()", lambda: list(module.get_inputs()))
    if not template or not isinstance(template[0], torch.Tensor):
        raise UserOpError(f"op {name!r}: get_inputs() must return a list starting with a tensor")
    for i, v in enumerate(template):
        _arg_type(v, i)  # a list or a dict argument is refused before forward runs
    with torch.no_grad():
        out = ran("Model.forward(*get_inputs())", lambda: model(*template))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    if not all(isinstance(o, torch.Tensor) for o in outs):
        raise UserOpError(f"op {name!r}: Model.forward must return a tensor or a tuple of tensors")
    returns = "Tensor" if not isinstance(out, (tuple, list)) else f"({', '.join(['Tensor'] * len(outs))})"
    schema = f"{name}({', '.join(_arg_type(v, i) for i, v in enumerate(template))}) -> {returns}"
    copies: dict = {}

    def reference(*args):
        """Model.forward, with the model's parameters in the first floating input's dtype and device."""
        like = next((a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()), args[0])
        key = (like.device, like.dtype if like.is_floating_point() else None)
        m = copies.get(key)
        if m is None:
            m = copy.deepcopy(model).to(device=like.device, dtype=key[1]) if key[1] else copy.deepcopy(model).to(like.device)
            copies[key] = m
        with torch.no_grad():
            result = m(*args)
        return tuple(result) if isinstance(result, list) else result

    base = tuple(template[0].shape)

    def make_inputs(shape, dtype, device, seed):
        sizes = dict(zip(base, shape))  # a template dim equal to one of the first input's takes its new size
        g = torch.Generator().manual_seed(seed)
        args = []
        for i, t in enumerate(template):
            if not isinstance(t, torch.Tensor):
                args.append(t)
                continue
            dims = tuple(shape) if i == 0 else tuple(sizes.get(d, d) for d in t.shape)
            if t.is_floating_point():
                args.append(torch.randn(dims, generator=g).to(device=device, dtype=dtype))
            else:
                high = int(t.max()) + 1 if t.numel() else 1
                args.append(torch.randint(0, max(high, 1), dims, generator=g).to(device=device, dtype=t.dtype))
        return tuple(args)

    doc = (inspect.getdoc(module.Model) or "").split("\n")[0]
    return build_spec(name, schema, reference, make_inputs, shapes=[base], description=doc or f"KernelBench op {name}",
                      reference_source=source, fixed_shapes=True, tolerance_scale=tolerance_scale)


def from_kernelbench(path: str | Path, name: str | None = None, *, persist: bool = True):
    """Register the op a KernelBench-style file defines (name: the file's stem unless given);
    returns its entry point. The file runs in this process: use it for files you trust."""
    from kforge import ops

    path = Path(path)
    if name is None:
        name = path.stem.lower()
        if not NAME.match(name):
            raise UserOpError(f"{path.name}: its stem {name!r} is not a valid op name; name the op: "
                              f"kforge generate NAME --spec-file {path}")
    check_name(name)
    try:
        source = path.read_text()
    except OSError as exc:
        raise UserOpError(f"cannot read {path}: {exc}") from None
    problems = kernelbench_problems(source)
    if problems:
        raise UserOpError(f"{path}: not a KernelBench-style file: {'; '.join(problems)}")
    with _LOCK:
        if name in ops.SPECS:
            raise UserOpError(f"op {name!r} is already registered")
        module = _module_from(name, path)
        spec = kernelbench_spec(name, module, source)
        entry = ops.register(spec)
        if persist:
            _write(name, {"kind": "kernelbench", "trusted": True, "name": name, "schema": spec.schema, "source": source})
        return entry


def schema_from_args(name: str, args: tuple, outputs, reference: Callable | None = None) -> str:
    """A schema from one call: argument types from the values, names from the reference's
    parameters when they fit (else in0, a1, ...)."""
    returns = "Tensor" if not isinstance(outputs, (tuple, list)) else f"({', '.join(['Tensor'] * len(outputs))})"
    params = []
    try:
        params = [p.name for p in inspect.signature(reference).parameters.values()] if reference else []
    except (TypeError, ValueError):
        pass
    typed = [_arg_type(v, i) for i, v in enumerate(args)]
    if len(params) == len(typed) and all(NAME.match(p) for p in params):
        typed = [f"{t.split(' ')[0]} {p}" for t, p in zip(typed, params)]
    return f"{name}({', '.join(typed)}) -> {returns}"
