"""User-defined ops: `kforge.define_op`, the `@kforge.op` decorator and KernelBench-style files.

    def reference(x, scale: float):            # in a .py file: the definition is persisted
        return torch.relu(x) * scale

    def make_inputs(shape, dtype, device, seed):
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(shape, generator=g).to(device, dtype), 0.5)

    scaled_relu = kforge.define_op("scaled_relu", "(Tensor x, float scale) -> Tensor", reference,
                                   make_inputs, shapes=[(4096, 4096)])
    y = scaled_relu(x, 0.5)                     # also kforge.ops.scaled_relu, torch.ops.kforge.scaled_relu

A user op gets the built-ins' registry, routing, miss log and generation: its reference is also its
vendor implementation (what a miss serves), its fake runs the reference on fake tensors, and its
key's problem is the shape of its first tensor argument (so `make_inputs(shape, ...)` must build a
first tensor of exactly `shape`, and accept other shapes of the same rank: the evaluator tries
perturbed ones). Defaults that a kernel author may want to override: `dtypes`, `exact_dims` (the
last dim), `bytes_moved` (one read and one write of the first tensor), `flops`, `tolerance`.

Persisted under `$KFORGE_HOME/ops/<name>/` (definition.json and a copy of the defining file), so
another process (a sandboxed evaluation worker, a later session) loads it by name: `get_spec(name)`
and `kforge.ops.<name>` load persisted ops on first use. Loading runs that file's code: it is the
user's own code, trusted as their environment is. A file from an untrusted source (an issue) must
only ever be loaded inside the sandboxed worker.

A KernelBench-style file defines an op too: `kforge.ops.kernelbench`.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from kforge import paths
from kforge.errors import KforgeError, KforgeInputError
from kforge.files import CorruptFile, atomic_write_bytes, read_json
from kforge.records import OP_NAME
from kforge.ops.spec import OpSpec, prod, resolution_floor

NAME = OP_NAME  # kept for callers: use NAME.fullmatch (a `$` anchor let "name\n" through)
DEFAULT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_DTYPE_NAMES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32,
                "float64": torch.float64}
_LOCK = threading.RLock()


class UserOpError(KforgeError, ValueError):
    """A user op definition that kforge cannot register, load or persist."""


class UntrustedCodeError(KforgeError, RuntimeError):
    """The op's code came from an untrusted source (an issue): it runs only in sandboxed workers."""


IN_SANDBOX = "KFORGE_IN_SANDBOX"  # set by kforge.evaluate.sandbox in its workers (same literal there)


# Names in the kforge.ops namespace an op may not take (an op is bound there by name).
RESERVED = frozenset("get_spec register is_builtin user kernelbench spec checks SPECS ENTRIES OpSpec".split())


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UserOpError(f"op name {name!r}: lowercase letters, digits and _, starting with a letter, at most 64")
    if name in RESERVED:
        raise UserOpError(f"op name {name!r} is reserved (a name in the kforge.ops namespace)")
    return name


def ops_dir() -> Path:
    return paths.home() / "ops"


# -- definition ----------------------------------------------------------------------------------
def _schema(name: str, schema: str) -> str:
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


def _shapes(name: str, shapes) -> tuple[tuple[int, ...], ...]:
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


def _scaled_floor(scale: float) -> Callable:
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
    schema = _schema(name, schema)
    shapes = _shapes(name, shapes)
    dtypes = tuple(dtypes)
    if not dtypes or any(d not in _DTYPE_NAMES.values() for d in dtypes):
        raise UserOpError(f"op {name!r}: dtypes must be among {', '.join(_DTYPE_NAMES)}")
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
        tolerance=tolerance or _scaled_floor(tolerance_scale),
        bytes_moved=bytes_moved or (lambda p, dtype: 2 * prod(p) * (torch.finfo(dtype).bits // 8)),
        flops=flops or (lambda p, dtype: prod(p)),
        shape_sets={"smoke": shapes}, num_outputs=num_outputs, reference_source=reference_source,
        fixed_shapes=fixed_shapes, secret_shapes=secret_shapes)
    holder.append(spec)
    return spec


_LOADING: set[str] = set()  # persisted ops whose file is being run by `load` (it may define itself)


def define_op(name: str, schema: str, reference: Callable, make_inputs: Callable, *, shapes: Sequence,
              persist: bool = True, replace: bool = False, **options):
    """Register a user op; returns its entry point (also `kforge.ops.<name>`). `options`: see
    `build_spec`. With `persist`, the definition is saved so other processes load it by name:
    reference and make_inputs must then be module-level functions of one .py file (which may
    itself call define_op: loading it elsewhere registers the op once). A name persisted before is
    refused unless `replace`."""
    from kforge import ops

    with _LOCK:
        if name in ops.SPECS:
            raise UserOpError(f"op {name!r} is already registered" + (" (a built-in op)" if ops.is_builtin(name) else ""))
        if _LOADING:
            persist = False  # `load` is running a persisted op's file: register what it defines, rewrite nothing
        elif persist and not replace and name in persisted():
            raise UserOpError(f"op {name!r} is already persisted under {ops_dir() / name}: pass replace=True "
                              "to overwrite it, or choose another name")
        spec = build_spec(name, schema, reference, make_inputs, shapes=shapes, **options)
        manifest = _manifest(spec, reference, make_inputs, options) if persist else None
        entry = ops.register(spec)
        if manifest is not None:
            _write(name, manifest)
        return entry


def op(schema: str, make_inputs: Callable, *, shapes: Sequence, name: str | None = None, **options):
    """Decorator form of `define_op`: the decorated function is the reference; the op's name is
    the function's unless given. Returns the op's entry point."""

    def wrap(reference: Callable):
        entry = define_op(name or reference.__name__, schema, reference, make_inputs, shapes=shapes, **options)
        entry.__wrapped__ = reference  # the file's attribute is the entry point; `load` finds the function here
        return entry

    return wrap


# -- persistence ---------------------------------------------------------------------------------
_KEPT = ("dtypes", "problem_dims", "exact_dims", "description", "fixed_shapes", "tolerance_scale")


def _manifest(spec: OpSpec, reference: Callable, make_inputs: Callable, options: dict) -> dict:
    unkept = sorted(set(options) - set(_KEPT) - {"reference_source"})
    if unkept:
        raise UserOpError(f"op {spec.name!r}: {', '.join(unkept)} cannot be persisted (functions); "
                          "define them in the op's file and load it there, or pass persist=False")
    files = set()
    for fn in (reference, make_inputs):
        path = inspect.getsourcefile(fn) if inspect.isfunction(fn) else None
        if path is None or fn.__qualname__ != fn.__name__ or not Path(path).is_file():
            raise UserOpError(f"op {spec.name!r}: to persist it, {getattr(fn, '__name__', fn)!r} must be a module-level "
                              "function of a .py file (or pass persist=False)")
        files.add(path)
    if len(files) != 1:
        raise UserOpError(f"op {spec.name!r}: reference and make_inputs must come from one file to be persisted")
    return {"kind": "function", "trusted": True, "name": spec.name, "schema": spec.schema,
            "reference": reference.__name__,
            "make_inputs": make_inputs.__name__, "shapes": [list(s) for s in spec.shape_sets["smoke"]],
            "dtypes": [str(d).removeprefix("torch.") for d in spec.dtypes], "problem_dims": list(spec.problem_dims),
            "exact_dims": list(spec.exact_dims), "description": spec.description, "fixed_shapes": spec.fixed_shapes,
            "tolerance_scale": float(options.get("tolerance_scale", 1.0)), "source": Path(files.pop()).read_text()}


def _write(name: str, manifest: dict) -> None:
    folder = ops_dir() / check_name(name)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "source.py", manifest.pop("source").encode())
    atomic_write_bytes(folder / "definition.json", (json.dumps(manifest, indent=1) + "\n").encode())


def persisted() -> list[str]:
    """Names of the user ops persisted under this KFORGE_HOME."""
    folder = ops_dir()
    return sorted(p.name for p in folder.iterdir() if (p / "definition.json").is_file()) if folder.is_dir() else []


def _module_from(name: str, path: Path):
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


def _untrusted_stub(name: str) -> Callable:
    def stub(*args, **kwargs):
        raise UntrustedCodeError(f"op {name!r} was defined by code from an untrusted source: it runs only in "
                                 "kforge's sandboxed workers (kforge generate / evaluate), not in this process")

    return stub


def persist_untrusted(name: str, kind: str, source: str, description: Any, *, shapes, dtypes,
                      tolerance_scale: float = 1.0) -> None:
    """Save an op whose code came from an untrusted source, with the `description` a sandboxed
    worker made of it (`describe_here`): other processes get a spec whose code refuses to run
    outside the sandbox, workers get the real one. The description came out of a process that ran
    that code, so it is data to check, never to trust: only known keys, each validated here; the
    shapes, dtypes and tolerance are the request's own, the description a fixed text (a docstring
    would otherwise reach the prompts unfenced), and the untrusted mark is written last."""
    check_name(name)
    if kind not in ("kernelbench", "function"):
        raise UserOpError(f"op {name!r}: unknown kind {kind!r}")
    if not isinstance(description, dict):
        raise UserOpError(f"op {name!r}: the sandbox's description is not a JSON object")
    schema = description.get("schema")
    if not isinstance(schema, str) or len(schema) > 2000:
        raise UserOpError(f"op {name!r}: the sandbox gave no usable schema")
    schema = _schema(name, schema)
    spec_shapes = _shapes(name, description.get("shapes") or [])
    wanted = _shapes(name, shapes)
    if kind == "function" and spec_shapes != wanted:
        raise UserOpError(f"op {name!r}: the sandbox described shapes {spec_shapes}, the request asked {wanted}")
    if kind == "kernelbench" and any(s not in spec_shapes for s in wanted):
        raise UserOpError(f"op {name!r}: a KernelBench op is defined at {spec_shapes} only (get_inputs()); the "
                          f"request asked {wanted}")
    rank = len(spec_shapes[0])
    dims = description.get("problem_dims")
    exact = description.get("exact_dims")
    if (not isinstance(dims, list) or len(dims) != rank or not all(isinstance(d, str) and NAME.fullmatch(d) for d in dims)
            or not isinstance(exact, list) or not all(d in dims for d in exact)):
        raise UserOpError(f"op {name!r}: the sandbox gave unusable problem dims")
    fixed = description.get("fixed_shapes", kind == "kernelbench")  # absent from older descriptions
    if not isinstance(fixed, bool):
        raise UserOpError(f"op {name!r}: the sandbox gave an unusable fixed_shapes")
    names = [str(d).removeprefix("torch.") for d in dtypes]
    if any(d not in _DTYPE_NAMES for d in names):
        raise UserOpError(f"op {name!r}: dtypes must be among {', '.join(_DTYPE_NAMES)}")
    _scaled_floor(float(tolerance_scale))  # validates it
    manifest = {"kind": kind, "name": name, "schema": schema, "shapes": [list(x) for x in spec_shapes],
                "dtypes": names, "problem_dims": dims, "exact_dims": exact,
                "fixed_shapes": fixed, "description": f"user-defined op {name}",
                "tolerance_scale": float(tolerance_scale), "source": source}
    manifest["trusted"] = False
    _write(name, manifest)


def describe_here(payload: dict) -> dict:
    """In a sandboxed worker: build the op from untrusted code and describe it as JSON data."""
    if os.environ.get(IN_SANDBOX) != "1":
        raise UntrustedCodeError("describe_here runs untrusted code: only inside a sandboxed worker")
    name, kind = payload["name"], payload["kind"]
    path = Path(os.environ.get("TMPDIR") or ".") / f"{name}.py"
    path.write_text(payload["source"])
    module = _module_from(name, path)
    from kforge.ops.kernelbench import kernelbench_spec, schema_from_args

    scale = float(payload.get("tolerance_scale", 1.0))
    if kind == "kernelbench":
        spec = kernelbench_spec(name, module, payload["source"], scale)
    else:
        for needed in ("reference", "make_inputs"):
            if not callable(getattr(module, needed, None)):
                raise UserOpError(f"op {name!r}: the code defines no function {needed}()")
        shapes = _shapes(name, payload["shapes"])
        dtype = _DTYPE_NAMES[payload["dtypes"][0]]
        args = tuple(module.make_inputs(shapes[0], dtype, "cpu", 0))
        if not args or not isinstance(args[0], torch.Tensor) or tuple(args[0].shape) != shapes[0]:
            raise UserOpError(f"op {name!r}: make_inputs(shape, ...) must return a tuple whose first item is a "
                              "tensor of that shape")
        outputs = module.reference(*args)
        spec = build_spec(name, schema_from_args(name, args, outputs, module.reference), module.reference,
                          module.make_inputs,
                          shapes=shapes, dtypes=[_DTYPE_NAMES[d] for d in payload["dtypes"]],
                          reference_source=payload["source"], tolerance_scale=scale)
    return {"schema": spec.schema, "shapes": [list(x) for x in spec.shape_sets["smoke"]],
            "dtypes": [str(d).removeprefix("torch.") for d in spec.dtypes], "problem_dims": list(spec.problem_dims),
            "exact_dims": list(spec.exact_dims), "fixed_shapes": spec.fixed_shapes,
            "description": spec.description, "tolerance_scale": scale}


def _stub_spec(name: str, manifest: dict, source: str) -> OpSpec:
    stub = _untrusted_stub(name)
    schema = manifest["schema"]
    num_outputs = len(torch._C.parse_schema(f"kforge::{schema}").returns)
    spec = build_spec(name, schema, stub, stub, shapes=manifest["shapes"],
                      dtypes=[_DTYPE_NAMES[d] for d in manifest["dtypes"]], problem_dims=manifest["problem_dims"],
                      exact_dims=manifest["exact_dims"], description=manifest.get("description", ""),
                      reference_source=source, fixed_shapes=manifest.get("fixed_shapes", False),
                      tolerance_scale=manifest.get("tolerance_scale", 1.0))
    assert spec.num_outputs == num_outputs
    return dataclasses.replace(spec, vendor=stub, fake=stub)


# Set by processes that handle untrusted requests (`kforge issue run`): no persisted user-op code
# runs here, trusted or not (a sandboxed worker shares this user's files and could rewrite a mark).
REFUSE_CODE = False


def _function(module, attr: str) -> Callable:
    fn = getattr(module, attr)
    return getattr(fn, "__wrapped__", fn)


MAX_MANIFEST_BYTES = 1 << 20  # a definition is a few hundred bytes; its source is a file of its own
_MANIFEST_TYPES = {"kind": str, "schema": str, "shapes": list, "dtypes": list, "problem_dims": list,
                   "exact_dims": list, "description": str, "fixed_shapes": bool, "tolerance_scale": (int, float),
                   "reference": str, "make_inputs": str}


def _manifest_problem(manifest: Any) -> str | None:
    """Why a definition.json read from disk cannot be used, or None: its fields' types (a file kforge
    did not write, or one rewritten by code that shares this user's files, must not crash `load`)."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    for key, kind in _MANIFEST_TYPES.items():
        if key in manifest and (not isinstance(manifest[key], kind) or isinstance(manifest[key], bool) != (kind is bool)):
            return f"{key!r} has the wrong type ({type(manifest[key]).__name__})"
    # A trusted KernelBench op is rebuilt from its file; every other kind is built from these fields.
    needed = ("schema",) if manifest.get("kind") == "kernelbench" and manifest.get("trusted") is True else (
        "schema", "shapes", "dtypes", "problem_dims", "exact_dims")
    for key in needed:
        if key not in manifest:
            return f"{key!r} is missing"
    if not all(isinstance(d, str) and d in _DTYPE_NAMES for d in manifest.get("dtypes", [])):
        return f"dtypes must be among {', '.join(_DTYPE_NAMES)}"
    if not all(isinstance(d, str) for d in manifest.get("problem_dims", []) + manifest.get("exact_dims", [])):
        return "problem_dims and exact_dims must be lists of names"
    return None


def load(name: str):
    """Register the persisted op `name` in this process; returns its entry point. An op from an
    untrusted source runs its code only in a sandboxed worker; elsewhere its spec's code refuses."""
    from kforge import ops

    with _LOCK:
        if name in ops.SPECS:
            return ops.ENTRIES[name]
        folder = ops_dir() / check_name(name)  # a name from a record or a request: never a path
        try:
            manifest = read_json(folder / "definition.json", max_bytes=MAX_MANIFEST_BYTES)
        except (OSError, CorruptFile) as exc:
            raise UserOpError(f"op {name!r} is not persisted under {ops_dir()} ({exc})") from None
        problem = _manifest_problem(manifest)
        if problem is not None:
            raise UserOpError(f"op {name!r}: {folder / 'definition.json'} is not a kforge op definition: {problem}")
        if (manifest.get("trusted") is not True or REFUSE_CODE) and os.environ.get(IN_SANDBOX) != "1":
            if manifest.get("trusted") is not True:
                return ops.register(_stub_spec(name, manifest, (folder / "source.py").read_text()))
            raise UserOpError(f"op {name!r}: this process runs no user-op code (an issue runner); load it elsewhere")
        _LOADING.add(name)
        try:
            module = _module_from(name, folder / "source.py")
        finally:
            _LOADING.discard(name)
        if name in ops.SPECS:  # the file defines the op itself (define_op / @kforge.op at its top level)
            return ops.ENTRIES[name]
        scale = manifest.get("tolerance_scale", 1.0)
        if manifest.get("kind") == "kernelbench":
            from kforge.ops.kernelbench import kernelbench_spec

            spec = kernelbench_spec(name, module, (folder / "source.py").read_text(), scale)
        else:
            spec = build_spec(name, manifest["schema"], _function(module, manifest.get("reference", "reference")),
                              _function(module, manifest.get("make_inputs", "make_inputs")), shapes=manifest["shapes"],
                              dtypes=[_DTYPE_NAMES[d] for d in manifest["dtypes"]],
                              problem_dims=manifest["problem_dims"], exact_dims=manifest["exact_dims"],
                              description=manifest.get("description", ""),
                              fixed_shapes=manifest.get("fixed_shapes", False), tolerance_scale=scale)
        return ops.register(spec)
