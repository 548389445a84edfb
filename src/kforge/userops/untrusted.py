"""Ops whose code came from an untrusted source (the reference of a kernel-request issue), and
`Trust`: which persisted user ops' code a process runs, passed to `kforge.userops.load.load`.

Such code never runs outside a sandboxed worker: the worker builds the op and describes it as JSON
data (`describe_here`), the description and the code are persisted marked untrusted
(`persist_untrusted`), and other processes register a spec whose code refuses to run
(`stub_spec`). The worker, which alone runs the code, gets the real op.
"""
from __future__ import annotations

import dataclasses
import enum
import os
from pathlib import Path
from typing import Any, Callable

import torch

from kforge.specs import OpSpec
from kforge.userops import persist
from kforge.userops.build import (DTYPE_NAMES, NAME, OpKind, UntrustedCodeError, UserOpError, build_spec,
                                  checked_schema, checked_shapes, check_name, module_from, scaled_floor)
from kforge.userops.kernelbench import kernelbench_spec, schema_from_args

IN_SANDBOX = "KFORGE_IN_SANDBOX"  # set by kforge.evaluate.sandbox in its workers (same literal there)


class Trust(enum.Enum):
    """Which persisted user ops' code a process runs when it loads them."""

    OWN = "own"  # the user's own process: ops they defined run; ops from an untrusted source get stubs
    # A process handling an untrusted request (`kforge issue run`): no user-op code runs, trusted or
    # not (a sandboxed worker shares this user's files and could rewrite a trusted mark).
    NO_CODE = "no-code"
    SANDBOX = "sandbox"  # a sandboxed worker: every op's code runs there, contained

    @classmethod
    def here(cls) -> "Trust":
        """This process's own trust: SANDBOX in a sandboxed worker, else OWN."""
        return cls.SANDBOX if in_sandbox() else cls.OWN


def in_sandbox() -> bool:
    return os.environ.get(IN_SANDBOX) == "1"


def _untrusted_stub(name: str) -> Callable:
    def stub(*args, **kwargs):
        raise UntrustedCodeError(f"op {name!r} was defined by code from an untrusted source: it runs only in "
                                 "kforge's sandboxed workers (kforge generate / evaluate), not in this process")

    return stub


def persist_untrusted(name: str, kind: OpKind, source: str, description: Any, *, shapes, dtypes,
                      tolerance_scale: float = 1.0) -> None:
    """Save an op whose code came from an untrusted source, with the `description` a sandboxed
    worker made of it (`describe_here`): other processes get a spec whose code refuses to run
    outside the sandbox, workers get the real one. The description came out of a process that ran
    that code, so it is data to check, never to trust: only known keys, each validated here; the
    shapes, dtypes and tolerance are the request's own, the description a fixed text (a docstring
    would otherwise reach the prompts unfenced), and the untrusted mark is written last."""
    check_name(name)
    if not isinstance(kind, OpKind):
        raise UserOpError(f"op {name!r}: unknown kind {kind!r}")
    if not isinstance(description, dict):
        raise UserOpError(f"op {name!r}: the sandbox's description is not a JSON object")
    schema = description.get("schema")
    if not isinstance(schema, str) or len(schema) > 2000:
        raise UserOpError(f"op {name!r}: the sandbox gave no usable schema")
    schema = checked_schema(name, schema)
    spec_shapes = checked_shapes(name, description.get("shapes") or [])
    wanted = checked_shapes(name, shapes)
    if kind is OpKind.FUNCTION and spec_shapes != wanted:
        raise UserOpError(f"op {name!r}: the sandbox described shapes {spec_shapes}, the request asked {wanted}")
    if kind is OpKind.KERNELBENCH and any(s not in spec_shapes for s in wanted):
        raise UserOpError(f"op {name!r}: a KernelBench op is defined at {spec_shapes} only (get_inputs()); the "
                          f"request asked {wanted}")
    rank = len(spec_shapes[0])
    dims = description.get("problem_dims")
    exact = description.get("exact_dims")
    if (not isinstance(dims, list) or len(dims) != rank or not all(isinstance(d, str) and NAME.fullmatch(d) for d in dims)
            or not isinstance(exact, list) or not all(d in dims for d in exact)):
        raise UserOpError(f"op {name!r}: the sandbox gave unusable problem dims")
    fixed = description.get("fixed_shapes", kind is OpKind.KERNELBENCH)  # absent from older descriptions
    if not isinstance(fixed, bool):
        raise UserOpError(f"op {name!r}: the sandbox gave an unusable fixed_shapes")
    names = [str(d).removeprefix("torch.") for d in dtypes]
    if any(d not in DTYPE_NAMES for d in names):
        raise UserOpError(f"op {name!r}: dtypes must be among {', '.join(DTYPE_NAMES)}")
    scaled_floor(float(tolerance_scale))  # validates it
    manifest = {"kind": kind.value, "name": name, "schema": schema, "shapes": [list(x) for x in spec_shapes],
                "dtypes": names, "problem_dims": dims, "exact_dims": exact,
                "fixed_shapes": fixed, "description": f"user-defined op {name}",
                "tolerance_scale": float(tolerance_scale), "source": source}
    manifest["trusted"] = False
    persist.write(name, manifest)


def describe_here(payload: dict) -> dict:
    """In a sandboxed worker: build the op from untrusted code and describe it as JSON data.
    payload: name, kind (an `OpKind` value), source, shapes, dtypes, tolerance_scale."""
    if not in_sandbox():
        raise UntrustedCodeError("describe_here runs untrusted code: only inside a sandboxed worker")
    name = payload["name"]
    try:
        kind = OpKind(payload["kind"])
    except ValueError:
        raise UserOpError(f"op {name!r}: unknown kind {payload['kind']!r}") from None
    path = Path(os.environ.get("TMPDIR") or ".") / f"{name}.py"
    path.write_text(payload["source"])
    module = module_from(name, path)
    scale = float(payload.get("tolerance_scale", 1.0))
    if kind is OpKind.KERNELBENCH:
        spec = kernelbench_spec(name, module, payload["source"], scale)
    else:
        for needed in ("reference", "make_inputs"):
            if not callable(getattr(module, needed, None)):
                raise UserOpError(f"op {name!r}: the code defines no function {needed}()")
        shapes = checked_shapes(name, payload["shapes"])
        dtype = DTYPE_NAMES[payload["dtypes"][0]]
        args = tuple(module.make_inputs(shapes[0], dtype, "cpu", 0))
        if not args or not isinstance(args[0], torch.Tensor) or tuple(args[0].shape) != shapes[0]:
            raise UserOpError(f"op {name!r}: make_inputs(shape, ...) must return a tuple whose first item is a "
                              "tensor of that shape")
        outputs = module.reference(*args)
        spec = build_spec(name, schema_from_args(name, args, outputs, module.reference), module.reference,
                          module.make_inputs,
                          shapes=shapes, dtypes=[DTYPE_NAMES[d] for d in payload["dtypes"]],
                          reference_source=payload["source"], tolerance_scale=scale)
    return {"schema": spec.schema, "shapes": [list(x) for x in spec.shape_sets["smoke"]],
            "dtypes": [str(d).removeprefix("torch.") for d in spec.dtypes], "problem_dims": list(spec.problem_dims),
            "exact_dims": list(spec.exact_dims), "fixed_shapes": spec.fixed_shapes,
            "description": spec.description, "tolerance_scale": scale}


def stub_spec(name: str, manifest: dict, source: str) -> OpSpec:
    """The spec of a persisted untrusted op outside the sandbox: its code refuses to run."""
    stub = _untrusted_stub(name)
    schema = manifest["schema"]
    num_outputs = len(torch._C.parse_schema(f"kforge::{schema}").returns)
    spec = build_spec(name, schema, stub, stub, shapes=manifest["shapes"],
                      dtypes=[DTYPE_NAMES[d] for d in manifest["dtypes"]], problem_dims=manifest["problem_dims"],
                      exact_dims=manifest["exact_dims"], description=manifest.get("description", ""),
                      reference_source=source, fixed_shapes=manifest.get("fixed_shapes", False),
                      tolerance_scale=manifest.get("tolerance_scale", 1.0))
    assert spec.num_outputs == num_outputs
    return dataclasses.replace(spec, vendor=stub, fake=stub)
