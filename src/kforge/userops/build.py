"""A user op's `OpSpec` from its parts (`build_spec`), and the checks on every part a user gives.

Builds, never registers (`kforge.userops.define` registers): the bottom of the user-op wing, which
the other modules of `kforge.userops` import and which imports none of them.

A user op gets the built-ins' registry, routing, miss log and generation: its reference is also its
vendor implementation (what a miss serves), its fake runs the reference on fake tensors, and its
key's problem is the shape of its first tensor argument (so `make_inputs(shape, ...)` must build a
first tensor of exactly `shape`, and accept other shapes of the same rank: the evaluator tries
perturbed ones). Defaults that a kernel author may want to override: `dtypes`, `exact_dims` (the
last dim), `bytes_moved` (one read and one write of the first tensor), `flops`, `tolerance`.
"""
from __future__ import annotations

import dataclasses
import enum
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from kforge.errors import KforgeError, KforgeInputError
from kforge.records import OP_NAME
from kforge.specs import OpSpec, resolution_floor
from kforge.specs.spec import prod

NAME = OP_NAME  # use NAME.fullmatch (a `$` anchor let "name\n" through)
DEFAULT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
DTYPE_NAMES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32,
               "float64": torch.float64}


class OpKind(enum.Enum):
    """How a user op's file defines it; the values are what definition.json files hold."""

    FUNCTION = "function"  # module-level `reference(...)` and `make_inputs(shape, dtype, device, seed)`
    KERNELBENCH = "kernelbench"  # `class Model(nn.Module)`, `get_inputs()`, `get_init_inputs()`


class UserOpError(KforgeError, ValueError):
    """A user op definition that kforge cannot register, load or persist."""


class UntrustedCodeError(KforgeError, RuntimeError):
    """The op's code came from an untrusted source (an issue): it runs only in sandboxed workers."""


# Names in the kforge.ops namespace an op may not take (an op is bound there by name); the old
# submodule names (user, kernelbench, spec, checks) stay refused so persisted ops keep meaning one thing.
RESERVED = frozenset("get_spec register is_builtin entry library registry user kernelbench spec checks "
                     "SPECS ENTRIES OpSpec".split())


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UserOpError(f"op name {name!r}: lowercase letters, digits and _, starting with a letter, at most 64")
    if name in RESERVED:
        raise UserOpError(f"op name {name!r} is reserved (a name in the kforge.ops namespace)")
    return name


def checked_schema(name: str, schema: str) -> str:
    """`schema` with the op's name in front when it starts at "(", if it parses as a functional op
    named `name` returning tensors."""
    schema = schema.strip()
    if schema.startswith("("):
        schema = name + schema
    try:
        parsed = torch._C.parse_schema(f"kforge::{schema}")
    except RuntimeError as exc:
        raise UserOpError(f"op {name!r}: schema {schema!r} does not parse: {exc}") from None
    if parsed.name != f"kforge::{name}":
        raise UserOpError(f"op {name!r}: the schema names {parsed.name.split('::')[-1]!r}")
    if not parsed.returns or any(str(r.type) != "Tensor" for r in parsed.returns):
        raise UserOpError(f"op {name!r}: the schema must return Tensor or a tuple of Tensors, not {schema!r}")
    if any(a.alias_info is not None for a in parsed.arguments):
        raise UserOpError(f"op {name!r}: kforge ops are functional: no argument may be written (Tensor(a!))")
    return schema


def checked_shapes(name: str, shapes) -> tuple[tuple[int, ...], ...]:
    try:
        out = tuple(tuple(int(d) for d in s) for s in shapes)
    except (TypeError, ValueError, OverflowError):
        raise UserOpError(f"op {name!r}: shapes must be a list of shapes like [(4096, 4096)]") from None
    if not out or any(not s or any(d < 0 for d in s) for s in out) or len({len(s) for s in out}) != 1:
        raise UserOpError(f"op {name!r}: shapes must be a non-empty list of shapes of one rank, non-negative dims")
    return out


def _check_fn(name: str, spec_holder: list, dtypes: tuple[torch.dtype, ...]) -> Callable[[tuple], None]:
    """Tensors where the schema says Tensor, all on one device, the first in the op's dtypes."""

    def check(args: tuple) -> None:
        spec = spec_holder[0]
        device = None
        for i in spec.tensor_args:
            arg, t = spec.arg_names[i], args[i]
            if not isinstance(t, torch.Tensor):
                raise KforgeInputError(name, arg, f"must be a Tensor, got {type(t).__name__}")
            if device is None:
                device, first = t.device, arg
                if t.dtype not in dtypes:
                    raise KforgeInputError(name, arg, f"has dtype {t.dtype}; the op is defined for "
                                           + ", ".join(str(d).removeprefix("torch.") for d in dtypes))
            elif t.device != device:
                raise KforgeInputError(name, arg, f"is on {t.device} but '{first}' is on {device}")

    return check


def _functional(reference: Callable) -> Callable:
    """The reference as the op's vendor implementation: an output that shares memory with an
    input (`x.view(-1)`, `x` itself) is copied, since the schema declares no aliasing."""

    def vendor(*args):
        out = reference(*args)
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor) and a.numel()}
        outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        outs = tuple(o.clone() if o.numel() and o.untyped_storage().data_ptr() in inputs else o for o in outs)
        return outs if isinstance(out, (tuple, list)) else outs[0]

    return vendor


def _fake_fn(reference: Callable) -> Callable:
    """The reference on fake tensors gives the outputs' metadata; kforge outputs are new,
    contiguous tensors whatever the reference returns (a view of an input, say)."""

    def fake(*args):
        out = reference(*args)
        if isinstance(out, (tuple, list)):
            return tuple(torch.empty_like(o, memory_format=torch.contiguous_format) for o in out)
        return torch.empty_like(out, memory_format=torch.contiguous_format)

    return fake


def scaled_floor(scale: float) -> Callable:
    """The default error budget's resolution floor (one unit at the output, widened with the last
    dim), times `scale` (a request's tolerance)."""
    if not (0 < scale <= 100):
        raise UserOpError(f"tolerance scale {scale!r}: a number in (0, 100]")

    def tolerance(dtype, p):
        t = resolution_floor(dtype, p[-1] if p else 1)
        return dataclasses.replace(t, atol=t.atol * scale, rtol=t.rtol * scale)

    return tolerance


def build_spec(name: str, schema: str, reference: Callable, make_inputs: Callable, *, shapes: Sequence,
               dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES, problem_dims: Sequence[str] | None = None,
               exact_dims: Sequence[str] | None = None, bytes_moved: Callable | None = None,
               flops: Callable | None = None, tolerance: Callable | None = None, description: str = "",
               reference_source: str | None = None, fixed_shapes: bool = False,
               tolerance_scale: float = 1.0, secret_shapes: Callable | None = None) -> OpSpec:
    """The OpSpec of a user op (not registered; `define_op` registers it)."""
    check_name(name)
    if not callable(reference) or not callable(make_inputs):
        raise UserOpError(f"op {name!r}: reference and make_inputs must be callables")
    schema = checked_schema(name, schema)
    shapes = checked_shapes(name, shapes)
    dtypes = tuple(dtypes)
    if not dtypes or any(d not in DTYPE_NAMES.values() for d in dtypes):
        raise UserOpError(f"op {name!r}: dtypes must be among {', '.join(DTYPE_NAMES)}")
    rank = len(shapes[0])
    problem_dims = tuple(problem_dims or (f"d{i}" for i in range(rank)))
    if len(problem_dims) != rank:
        raise UserOpError(f"op {name!r}: {len(problem_dims)} problem_dims for shapes of rank {rank}")
    exact_dims = tuple(problem_dims[-1:] if exact_dims is None else exact_dims)
    holder: list = []
    first = [None]

    def problem(args):
        if first[0] is None:
            first[0] = holder[0].tensor_args[0]
        return tuple(args[first[0]].shape)

    num_outputs = len(torch._C.parse_schema(f"kforge::{schema}").returns)
    spec = OpSpec(
        name=name, schema=schema, description=description or f"user-defined op {name}",
        reference=reference, vendor=_functional(reference), fake=_fake_fn(reference), make_inputs=make_inputs,
        check=_check_fn(name, holder, dtypes), problem=problem, problem_dims=problem_dims, exact_dims=exact_dims,
        dtypes=dtypes,
        tolerance=tolerance or scaled_floor(tolerance_scale),
        bytes_moved=bytes_moved or (lambda p, dtype: 2 * prod(p) * (torch.finfo(dtype).bits // 8)),
        flops=flops or (lambda p, dtype: prod(p)),
        shape_sets={"smoke": shapes}, num_outputs=num_outputs, reference_source=reference_source,
        fixed_shapes=fixed_shapes, secret_shapes=secret_shapes)
    holder.append(spec)
    return spec


def module_from(name: str, path: Path):
    """Run the op's file at `path` as module `kforge_user_ops.<name>` (its code runs here)."""
    module_name = f"kforge_user_ops.{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise UserOpError(f"op {name!r}: loading {path} failed: {type(exc).__name__}: {exc}") from exc
    return module
