"""Bad calls of every op, through `kforge.ops.<op>` and `torch.ops.kforge.<op>`: a clear error that
names the op and the argument (`KforgeInputError` for argument problems), and the next valid call
is served as if nothing happened. Mixed dtypes the vendor accepts are served, not refused.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import pytest
import torch

import kforge
from kforge.errors import KforgeInputError
from kforge.ops import SPECS as _ALL, is_builtin
from kforge.testing import assert_matches_reference

# The built-in ops (user ops that other tests define in this process have their own tests).
SPECS = {name: spec for name, spec in _ALL.items() if is_builtin(name)}

ENTRIES = ("eager", "torch_ops")


def primary(op: str) -> str:
    """The name of the op's first tensor argument (`x` for most)."""
    spec = SPECS[op]
    return spec.arg_names[spec.tensor_args[0]]


def entry_point(op: str, entry: str):
    return getattr(kforge.ops, op) if entry == "eager" else getattr(torch.ops.kforge, op)


def valid_args(op: str, dtype: torch.dtype = torch.float32) -> tuple:
    return SPECS[op].make_inputs(SPECS[op].shape_sets["smoke"][0], dtype, "cpu", 0)


def replace(args: tuple, op: str, name: str, value) -> tuple:
    """`args` with argument `name` of `op` set to `value`."""
    out = list(args)
    out[SPECS[op].arg_names.index(name)] = value
    return tuple(out)


def names_op(message: str, op: str) -> bool:
    # kforge's own errors say kforge.<op>; the dispatcher's schema errors say kforge::<op>.
    return f"kforge.{op}" in message or f"kforge::{op}" in message


@dataclasses.dataclass(frozen=True)
class BadArg:
    """A call with one argument of `op` made invalid: `make(valid_args) -> bad args`."""

    op: str
    arg: str
    what: str
    make: Callable[[tuple], tuple]

    @property
    def id(self) -> str:
        return f"{self.op}-{self.what}"


def _set(op, name, value_fn):
    """A `make` that replaces argument `name` with `value_fn(args)`."""
    return lambda args: replace(args, op, name, value_fn(args))


def _to_meta(op, names):
    def make(args):
        for name in names:
            args = replace(args, op, name, args[SPECS[op].arg_names.index(name)].to("meta"))
        return args

    return make


def _bad_args() -> list[BadArg]:
    cases = []
    for op, spec in SPECS.items():
        names = spec.arg_names
        x, i = primary(op), spec.tensor_args[0]
        cases += [
            BadArg(op, x, f"int32_{x}", _set(op, x, lambda a, i=i: a[i].to(torch.int32))),
            BadArg(op, x, f"bool_{x}", _set(op, x, lambda a, i=i: a[i] > 0)),
            BadArg(op, x, f"complex_{x}", _set(op, x, lambda a, i=i: a[i].to(torch.complex64))),
            BadArg(op, x, f"0d_{x}", _set(op, x, lambda a, i=i: a[i].reshape(-1)[0])),
        ]
        # The norms' weight: a vector along x's last dim (gemv's (N, K) weight has its own tests).
        norm_weight = "weight" in names and valid_args(op)[names.index("weight")].dim() == 1
        if norm_weight:
            i = names.index("weight")
            cases += [
                # x on the CPU, weight on meta: torch.ops runs the Meta kernel (the fake), and the
                # eager entry's cache key reads get_device(), -1 for CPU and meta alike.
                BadArg(op, "weight", "weight_on_meta", _set(op, "weight", lambda a, i=i: a[i].to("meta"))),
                BadArg(op, "weight", "int_weight", _set(op, "weight", lambda a, i=i: a[i].to(torch.int64))),
                BadArg(op, "weight", "short_weight", _set(op, "weight", lambda a, i=i: a[i][:-1])),
                BadArg(op, "weight", "long_weight", _set(op, "weight", lambda a, i=i: torch.cat([a[i], a[i][:1]]))),
                BadArg(op, "weight", "2d_weight", _set(op, "weight", lambda a, i=i: a[i][None, :])),
                BadArg(op, "weight", "scalar_weight", _set(op, "weight", lambda a, i=i: a[i][0])),
            ]
        if "residual" in names:
            i = names.index("residual")
            cases += [
                BadArg(op, "residual", "residual_on_meta", _set(op, "residual", lambda a, i=i: a[i].to("meta"))),
                BadArg(op, "residual", "residual_fp64", _set(op, "residual", lambda a, i=i: a[i].double())),
                BadArg(op, "residual", "residual_bf16", _set(op, "residual", lambda a, i=i: a[i].bfloat16())),
                BadArg(op, "residual", "residual_short", _set(op, "residual", lambda a, i=i: a[i][:, :-1])),
                # Broadcastable is not the same shape: h would silently take x's shape.
                BadArg(op, "residual", "residual_broadcast", _set(op, "residual", lambda a, i=i: a[i][:1])),
                BadArg(op, "residual", "residual_3d", _set(op, "residual", lambda a, i=i: a[i][None])),
            ]
        if "eps" in names:
            cases += [
                BadArg(op, "eps", f"eps_{label}", _set(op, "eps", lambda a, v=v: v))
                for label, v in (("negative", -1e-6), ("nan", float("nan")), ("inf", float("inf")),
                                 ("neg_inf", float("-inf")))
            ]
        if norm_weight:  # the other way round: the row tensors on meta, weight on the CPU
            rows = [n for n in ("x", "residual") if n in names]
            cases.append(BadArg(op, "weight", "x_on_meta", _to_meta(op, rows)))
    return cases


BAD_ARGS = _bad_args()


def _assert_valid_call_served(op: str, entry: str) -> None:
    spec = SPECS[op]
    args = valid_args(op)
    assert_matches_reference(spec, args, entry_point(op, entry)(*args))


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("case", BAD_ARGS, ids=lambda c: c.id)
def test_bad_argument_raises_naming_op_and_argument(case: BadArg, entry):
    op = case.op
    fn = entry_point(op, entry)
    _assert_valid_call_served(op, entry)  # a decision cached for the valid signature
    bad = case.make(valid_args(op))
    for _ in range(2):  # a refused call is not cached as a decision: it is refused again
        with pytest.raises(KforgeInputError) as info:
            fn(*bad)
        assert (info.value.op, info.value.arg) == (op, case.arg), str(info.value)
        message = str(info.value)
        assert names_op(message, op) and f"'{case.arg}'" in message, message
    _assert_valid_call_served(op, entry)
    # Refused calls are neither served nor counted; the valid calls are.
    assert kforge.stats()["ops"][op]["calls"] == 2


# -- calls that do not fit the schema ---------------------------------------------------------------
def _schema_cases():
    """(op, what, make(valid args) -> (args, kwargs), names: strings the message must hold per entry)."""
    for op, spec in SPECS.items():
        n = len(spec.arg_names)
        required = [a for a in spec.arg_names if a not in spec.defaults]
        yield op, "too_many", lambda a: (a + (1.0,), {}), {}
        yield op, "missing", lambda a, r=required: (a[:len(r) - 1], {}), {"*": [f"'{required[-1]}'"]}
        # Argument counts fitting the schema: the dispatcher also names an unknown keyword.
        names = {"*": ["'bogus'"]} if len(required) < n else {"eager": ["'bogus'"]}
        yield op, "unknown_kwarg", lambda a, r=required: (a[:len(r)], {"bogus": 1.0}), names
        repeated = spec.arg_names[0]
        yield op, "repeated_kwarg", lambda a, k=repeated: (a, {k: a[0]}), {"eager": [f"'{repeated}'"]}
        if "eps" in spec.arg_names:
            yield op, "eps_str", lambda a, op=op: (replace(a, op, "eps", "1e-6"), {}), {"*": ["'eps'"]}
        x, i = primary(op), spec.tensor_args[0]
        yield op, f"{x}_list", lambda a, i=i: (a[:i] + ([1.0, 2.0],) + a[i + 1:], {}), {"*": [f"'{x}'"]}


SCHEMA_CASES = list(_schema_cases())


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("op, what, make, names", SCHEMA_CASES, ids=[f"{c[0]}-{c[1]}" for c in SCHEMA_CASES])
def test_call_not_fitting_the_schema_raises(op, what, make, names, entry):
    args, kwargs = make(valid_args(op))
    # kforge.ops raises TypeError (a Python call error) or KforgeInputError; the dispatcher behind
    # torch.ops raises RuntimeError for the same calls.
    with pytest.raises((TypeError, RuntimeError, KforgeInputError)) as info:
        entry_point(op, entry)(*args, **kwargs)
    message = str(info.value)
    assert names_op(message, op), message
    for needle in names.get("*", []) + names.get(entry, []):
        assert needle in message, message
    _assert_valid_call_served(op, entry)


def test_keyword_arguments_are_served():
    for op, spec in SPECS.items():
        args = valid_args(op)
        kwargs = {spec.arg_names[i]: a for i, a in enumerate(args)}
        for entry in ENTRIES:
            assert_matches_reference(spec, args, entry_point(op, entry)(**kwargs))


# -- mixed dtypes the vendor accepts -----------------------------------------------------------------
MIXED = [  # (op, dtype of x (and residual), dtype of weight)
    ("rms_norm", torch.bfloat16, torch.float32),
    ("rms_norm", torch.float16, torch.float32),
    ("rms_norm", torch.float32, torch.bfloat16),
    ("rms_norm", torch.bfloat16, torch.float16),
    ("fused_add_rms_norm", torch.bfloat16, torch.float32),
    ("fused_add_rms_norm", torch.float16, torch.float32),
]


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")  # ATen's note on its slow path
@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("op, x_dtype, weight_dtype", MIXED,
                         ids=[f"{op}-{str(x).removeprefix('torch.')}-{str(w).removeprefix('torch.')}" for op, x, w in MIXED])
def test_mixed_dtypes_the_vendor_accepts_are_served(op, x_dtype, weight_dtype, entry):
    spec = SPECS[op]
    args = spec.make_inputs((5, 100), x_dtype, "cpu", 0)
    args = replace(args, op, "weight", args[spec.arg_names.index("weight")].to(weight_dtype))
    out = entry_point(op, entry)(*args)
    assert_matches_reference(spec, args, out)  # includes: outputs have x's dtype, as the reference's
