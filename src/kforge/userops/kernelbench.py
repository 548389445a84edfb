"""KernelBench-style files as user ops (`OpKind.KERNELBENCH`): `class Model(nn.Module)`, `get_inputs()` and
`get_init_inputs()` (`kforge generate --spec-file FILE`).

The model is built once with torch.manual_seed(0) and its forward is the reference (parameters in
the first floating input's dtype and device); the arguments are `get_inputs()`'s, the schema is
read from them, and the op's shape is the first input's.

Inputs are always drawn by the file's own `get_inputs()` (under the case's seed), so a file that
draws `torch.randn(...) * 4` is verified on inputs of that scale. Other sizes come from the file's
globals: a module-level int that `get_inputs()` reads and neither `get_init_inputs()` nor `Model`
reads (`batch_size = 16`; not `dim` when the weights are sized by it) is a *size*, and the dims of
the first input that follow it (found by re-running `get_inputs()` with it changed) may vary:
`make_inputs` at such a shape sets those globals for the duration of one `get_inputs()` call (in
the process that loads the op: the sandboxed worker, for verification). The evaluator's secret
shapes vary only those dims (`secret_shapes`: one with more rows than the file shows, so a grid
fixed for its batch fails there, one with fewer and any free width changed); the router keys
the record with every other dim exact, and the last dim too (kernels specialise on the row
width). A file with no such size has `fixed_shapes`: verified at its shape, served there only.
"""
from __future__ import annotations

import ast
import contextlib
import copy
import inspect
import threading
import types
from pathlib import Path
from typing import Any, Callable

import torch

from kforge.ops.registry import SPECS, register
from kforge.specs import OpSpec
from kforge.userops import persist as on_disk  # `persist` is from_kernelbench's keyword
from kforge.userops.build import NAME, OpKind, UserOpError, build_spec, check_name, module_from
from kforge.userops.define import LOCK

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
    free = _free_dims(module, base)
    lock = threading.Lock()  # make_inputs patches the module's globals for one get_inputs() call

    def make_inputs(shape, dtype, device, seed):
        """The file's get_inputs() under `seed`, its size globals set for `shape` (floating
        tensors cast to `dtype`, every tensor moved to `device`)."""
        shape = tuple(int(d) for d in shape)
        fixed = [i for i in range(len(base)) if i not in free]
        if len(shape) != len(base) or any(shape[i] != base[i] for i in fixed):
            raise UserOpError(f"op {name!r}: shape {shape}: the file defines {base}, and only dims "
                              f"{sorted(free) or 'none'} may change (sizes from its globals)")
        sizes = {free[i]: shape[i] for i in free}
        with lock, _globals_set(module, sizes), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            values = ran("get_inputs()", lambda: list(module.get_inputs()))
        if len(values) != len(template) or not isinstance(values[0], torch.Tensor) or tuple(values[0].shape) != shape:
            got = tuple(values[0].shape) if values and isinstance(values[0], torch.Tensor) else None
            raise UserOpError(f"op {name!r}: get_inputs() with {sizes} gave a first input of {got}, not {shape}")
        return tuple(_placed(v, dtype, device) for v in values)

    exact = tuple(i for i in range(len(base)) if i not in free or i == len(base) - 1)

    def secret_shapes(public, rng, count):
        return _secret_shapes(base, free, exact, public, rng, count, lambda shape: reference(*make_inputs(
            shape, torch.float32, "cpu", 0)))

    dims = tuple(f"d{i}" for i in range(len(base)))
    doc = (inspect.getdoc(module.Model) or "").split("\n")[0]
    return build_spec(name, schema, reference, make_inputs, shapes=[base], description=doc or f"KernelBench op {name}",
                      problem_dims=dims, exact_dims=tuple(dims[i] for i in exact), reference_source=source,
                      fixed_shapes=not free, tolerance_scale=tolerance_scale, secret_shapes=secret_shapes)


def _placed(value, dtype: torch.dtype, device):
    if not isinstance(value, torch.Tensor):
        return value
    if value.is_floating_point():
        return value.to(device=device, dtype=dtype)
    return value.to(device=device)


def _globals_read(fn, module) -> set[str]:
    """Global names `fn`'s code reads, and those of the module's functions it reads in turn."""
    seen: set[str] = set()
    codes = [fn.__code__] if hasattr(fn, "__code__") else []
    visited: set = set()
    while codes:
        code = codes.pop()
        if code in visited:
            continue
        visited.add(code)
        codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
        for n in code.co_names:
            seen.add(n)
            value = getattr(module, n, None)
            if isinstance(value, types.FunctionType) and value.__module__ == module.__name__:
                codes.append(value.__code__)
    return seen


def _free_dims(module, base: tuple[int, ...]) -> dict[int, str]:
    """The dims of the first input that a size global drives: {dim index: global name}. A global
    is a size when get_inputs() reads it, get_init_inputs() and Model do not (weights and
    forward are sized by those), it is a positive int, and setting it to v + 1 changes exactly
    the dims of the first input equal to v, to v + 1, and no others (shape and rank kept)."""
    fixed = _globals_read(module.get_init_inputs, module)
    for attr in vars(module.Model).values():
        fn = attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr
        if isinstance(fn, types.FunctionType):
            fixed |= _globals_read(fn, module)
    free: dict[int, str] = {}
    for g in sorted(_globals_read(module.get_inputs, module) - fixed):
        v = getattr(module, g, None)
        if type(v) is not int or v < 1:
            continue
        try:
            with _globals_set(module, {g: v + 1}), torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                probe = list(module.get_inputs())
        except Exception:
            continue  # a size the file cannot change: it stays fixed
        if not probe or not isinstance(probe[0], torch.Tensor) or probe[0].dim() != len(base):
            continue
        moved = [i for i, (a, b) in enumerate(zip(base, probe[0].shape)) if a != b]
        if moved and all(base[i] == v and probe[0].shape[i] == v + 1 and i not in free for i in moved):
            free.update({i: g for i in moved})
    return free


@contextlib.contextmanager
def _globals_set(module, values: dict):
    saved = {g: getattr(module, g) for g in values}
    try:
        for g, v in values.items():
            setattr(module, g, v)
        yield
    finally:
        for g, v in saved.items():
            setattr(module, g, v)


def _secret_shapes(base, free: dict, exact, public, rng, count: int, runs: Callable) -> list[tuple[int, ...]]:
    """Up to `count` shapes for the evaluator, none public, each one the reference accepts
    (`runs`): first every free non-exact dim grown (up to twice the file's size: rows beyond the
    file's batch, at its exact dims, so that the router may serve that many), then free dims
    shrunk and free exact dims widened, then mixes. Only `free` dims ever change."""
    rows = [i for i in free if i not in exact]
    widths = [i for i in free if i in exact]

    def grown(d):
        return d + rng.randint(1, max(1, d))

    def shrunk(d):
        return rng.randint(1, d - 1) if d > 1 else grown(d)

    def widened(d):
        return d + rng.randint(1, max(8, d // 8))

    plans = []
    if rows:
        plans.append({i: grown for i in rows})
    plans.append({**{i: shrunk for i in rows}, **{i: widened for i in widths}})
    plans += [{i: rng.choice((grown, shrunk)) for i in free} for _ in range(max(0, count - len(plans)))]
    out: list[tuple[int, ...]] = []
    for plan in plans:
        for _ in range(20):
            shape = tuple(plan[i](d) if i in plan else d for i, d in enumerate(base))
            if shape not in public and shape not in out:
                break
        else:
            continue
        try:
            runs(shape)
        except Exception:
            continue  # the file's Model does not take this size after all: not a shape of the op
        out.append(shape)
        if len(out) == count:
            break
    return out


def from_kernelbench(path: str | Path, name: str | None = None, *, persist: bool = True):
    """Register the op a KernelBench-style file defines (name: the file's stem unless given);
    returns its entry point. The file runs in this process: use it for files you trust."""
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
    with LOCK:
        if name in SPECS:
            raise UserOpError(f"op {name!r} is already registered")
        module = module_from(name, path)
        spec = kernelbench_spec(name, module, source)
        entry = register(spec)
        if persist:
            on_disk.write(name, {"kind": OpKind.KERNELBENCH.value, "trusted": True, "name": name, "schema": spec.schema,
                                 "source": source})
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
