"""Every bad input to every built-in op is refused with `KforgeInputError` naming the op and the
argument, through `kforge.ops.<op>` and `torch.ops.kforge.<op>`: for every tensor argument a
dtype (or dtype mix) the op does not define, another device (meta), a wrong rank, wrong sizes and
non-tensors; out-of-range values where the op takes indices; the scalar arguments. The dtype mixes
the op does define are served, matching the reference and without a warning.

The expectations are written here per op, not read from the specs' checks (a test that ran the
checks' own code on both sides would prove nothing). One refusal is not kforge's: a value of the
wrong Python type for the schema (a list or a float where it takes a Tensor, a str where it takes
an int) is refused by `torch.ops.kforge.<op>` before any kforge code runs, as torch's RuntimeError
naming `kforge::<op>` and the argument; `kforge.ops.<op>` refuses the same call with KforgeInputError.

Out-of-range values are read on CPU tensors only (on a GPU that costs a device sync per call and
cannot run under CUDA-graph capture): `test_values_are_not_read_off_the_cpu`.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable

import pytest
import torch

import kforge
from kforge.errors import KforgeInputError
from kforge.ops import SPECS as _ALL, is_builtin
from kforge.testing import assert_matches_reference

SPECS = {name: spec for name, spec in _ALL.items() if is_builtin(name)}
ENTRIES = ("eager", "torch_ops")

BF16, F16, F32, F64 = torch.bfloat16, torch.float16, torch.float32, torch.float64
I32, I64 = torch.int32, torch.int64
FLOATS = (BF16, F16, F32, F64)
CANDIDATES = FLOATS + (I32, I64, torch.bool, torch.complex64)
BASE = BF16  # the primary input's dtype in every case: a bf16 model's activations

# op -> tensor argument -> the dtypes it takes with a bf16 primary input (the other arguments as
# make_inputs draws them). The primary takes every float dtype; a primary of another float dtype
# than its partners is a mix judged by the partner's row.
TAKES = {
    "rms_norm": {"x": FLOATS, "weight": FLOATS},
    "fused_add_rms_norm": {"x": FLOATS, "residual": (BF16,), "weight": FLOATS},
    "softmax": {"x": FLOATS},
    "silu_and_mul": {"x": FLOATS},
    "topk_softmax": {"x": FLOATS},
    "cross_entropy": {"x": FLOATS, "target": (I64, I32)},
    "layer_norm": {"x": FLOATS, "weight": FLOATS, "bias": FLOATS},
    "rotary_embedding": {"query": FLOATS, "key": (BF16,), "positions": (I64,), "cos_sin_cache": (F32, BF16)},
    "gemv": {"x": FLOATS, "weight": (BF16,)},
    "fused_moe": {"x": FLOATS, "gate_up": (BF16,), "down": (BF16,), "topk_weights": (F32, BF16),
                  "topk_ids": (I32, I64)},
}


def entry_point(op: str, entry: str):
    return getattr(kforge.ops, op) if entry == "eager" else getattr(torch.ops.kforge, op)


def primary(op: str) -> str:
    spec = SPECS[op]
    return spec.arg_names[spec.tensor_args[0]]


def tensor_names(op: str) -> tuple[str, ...]:
    spec = SPECS[op]
    return tuple(spec.arg_names[i] for i in spec.tensor_args)


def valid_args(op: str) -> tuple:
    spec = SPECS[op]
    return spec.make_inputs(spec.shape_sets["smoke"][0], BASE, "cpu", 0)


def replace(op: str, args: tuple, name: str, value) -> tuple:
    out = list(args)
    out[SPECS[op].arg_names.index(name)] = value
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Bad:
    """One argument of `op` made invalid: `value(the argument, all args)` replaces it. `blamed`:
    the argument the error must name (None: any tensor argument, and the message names `arg`)."""

    op: str
    arg: str
    what: str
    value: Callable[[Any, tuple], Any]
    blamed: str | None = ""

    def make(self) -> tuple:
        args = valid_args(self.op)
        return replace(self.op, args, self.arg, self.value(args[SPECS[self.op].arg_names.index(self.arg)], args))

    @property
    def expected(self) -> str | None:
        return self.arg if self.blamed == "" else self.blamed

    @property
    def id(self) -> str:
        return f"{self.op}-{self.arg}-{self.what}"


def _generic_cases() -> list[Bad]:
    """For every tensor argument of every op: the dtypes it does not take, non-tensors and (for ops
    of several tensors) the meta device while the others stay on the CPU."""
    cases = []
    for op in SPECS:
        names = tensor_names(op)
        for name in names:
            others = [d for d in CANDIDATES if d not in TAKES[op][name]]
            cases += [Bad(op, name, str(d).removeprefix("torch."), lambda t, a, d=d: t.to(d)) for d in others]
            cases += [Bad(op, name, "list", lambda t, a: t.tolist()), Bad(op, name, "none", lambda t, a: None),
                      Bad(op, name, "float", lambda t, a: 1.0)]
            if len(names) > 1:  # the primary moved: its first partner is blamed, the message names both
                cases.append(Bad(op, name, "meta", lambda t, a: t.to("meta"), None if name == primary(op) else ""))
    return cases


def _zero_d(t, a):
    return t.reshape(-1)[0]


def _drop_last(t, a):
    return t[..., :-1]


def _lead(t, a):
    return t[None]


SHAPE_CASES = [  # wrong ranks and sizes, per op
    Bad("rms_norm", "x", "0d", _zero_d),
    Bad("rms_norm", "x", "hidden_not_weight", _drop_last, "weight"),
    Bad("rms_norm", "weight", "2d", _lead),
    Bad("rms_norm", "weight", "0d", _zero_d),
    Bad("rms_norm", "weight", "short", _drop_last),
    Bad("rms_norm", "weight", "long", lambda t, a: torch.cat([t, t[:1]])),
    Bad("fused_add_rms_norm", "x", "0d", _zero_d),
    Bad("fused_add_rms_norm", "x", "rank_up", _lead, "residual"),
    Bad("fused_add_rms_norm", "residual", "rank_up", _lead),
    Bad("fused_add_rms_norm", "residual", "short", _drop_last),
    Bad("fused_add_rms_norm", "residual", "broadcast", lambda t, a: t[:1]),  # h would take x's shape
    Bad("fused_add_rms_norm", "weight", "2d", _lead),
    Bad("fused_add_rms_norm", "weight", "short", _drop_last),
    Bad("softmax", "x", "0d", _zero_d),
    Bad("silu_and_mul", "x", "0d", _zero_d),
    Bad("silu_and_mul", "x", "odd_last_dim", _drop_last),
    Bad("topk_softmax", "x", "0d", _zero_d),
    Bad("cross_entropy", "x", "0d", _zero_d),
    Bad("cross_entropy", "x", "no_vocab", lambda t, a: t[..., :0]),
    Bad("cross_entropy", "x", "rank_up", _lead, "target"),
    Bad("cross_entropy", "target", "rank_up", _lead),
    Bad("cross_entropy", "target", "0d", _zero_d),
    Bad("cross_entropy", "target", "short", lambda t, a: t[:-1]),
    Bad("cross_entropy", "target", "like_x", lambda t, a: torch.zeros(a[0].shape, dtype=t.dtype)),
    Bad("layer_norm", "x", "0d", _zero_d),
    Bad("layer_norm", "x", "hidden_not_weight", _drop_last, "weight"),
    *[Bad("layer_norm", name, what, fn) for name in ("weight", "bias")
      for what, fn in (("2d", _lead), ("0d", _zero_d), ("short", _drop_last))],
    Bad("rotary_embedding", "query", "2d", lambda t, a: t[:, 0]),
    Bad("rotary_embedding", "query", "4d", _lead),
    Bad("rotary_embedding", "key", "2d", lambda t, a: t[:, 0]),
    Bad("rotary_embedding", "key", "tokens", lambda t, a: t[:-1]),
    Bad("rotary_embedding", "key", "head_size", _drop_last),
    Bad("rotary_embedding", "positions", "2d", _lead),
    Bad("rotary_embedding", "positions", "tokens", lambda t, a: t[:-1]),
    Bad("rotary_embedding", "cos_sin_cache", "1d", lambda t, a: t[0]),
    Bad("rotary_embedding", "cos_sin_cache", "odd_rot_dim", _drop_last),
    Bad("rotary_embedding", "cos_sin_cache", "rot_dim_over_head", lambda t, a: torch.cat([t, t], -1)),
    Bad("rotary_embedding", "cos_sin_cache", "no_rows", lambda t, a: t[:0]),
    Bad("gemv", "x", "0d", _zero_d),
    Bad("gemv", "x", "k_not_weight", _drop_last, "weight"),
    Bad("gemv", "weight", "1d", lambda t, a: t[0]),
    Bad("gemv", "weight", "3d", _lead),
    Bad("gemv", "weight", "k", _drop_last),
    Bad("fused_moe", "x", "1d", lambda t, a: t[0]),
    Bad("fused_moe", "x", "3d", _lead),
    Bad("fused_moe", "x", "hidden_not_gate_up", _drop_last, "gate_up"),
    Bad("fused_moe", "gate_up", "2d", lambda t, a: t[0]),
    Bad("fused_moe", "gate_up", "odd_rows", lambda t, a: t[:, :-1]),
    Bad("fused_moe", "gate_up", "hidden", _drop_last),
    Bad("fused_moe", "down", "experts", lambda t, a: t[:-1]),
    Bad("fused_moe", "down", "inter", _drop_last),
    Bad("fused_moe", "down", "2d", lambda t, a: t[0]),
    Bad("fused_moe", "topk_weights", "tokens", lambda t, a: t[:-1]),
    Bad("fused_moe", "topk_weights", "1d", lambda t, a: t[:, 0]),
    Bad("fused_moe", "topk_ids", "k", _drop_last),
    Bad("fused_moe", "topk_ids", "3d", _lead),
]


def _set_entry(index, value):
    def fn(t, a):
        t = t.clone()
        t.view(-1)[index] = value
        return t

    return fn


VALUE_CASES = [  # values out of range: read on every CPU call
    Bad("cross_entropy", "target", "vocab", _set_entry(0, 64)),
    Bad("cross_entropy", "target", "minus_one", _set_entry(1, -1)),
    Bad("cross_entropy", "target", "below_ignore", _set_entry(2, -101)),
    Bad("cross_entropy", "target", "int32_vocab", lambda t, a: _set_entry(3, 64)(t, a).to(I32)),
    Bad("rotary_embedding", "positions", "max_position", lambda t, a: _set_entry(0, a[3].shape[0])(t, a)),
    Bad("rotary_embedding", "positions", "minus_one", _set_entry(1, -1)),  # indexing would wrap it silently
    Bad("fused_moe", "topk_ids", "experts", lambda t, a: _set_entry(0, a[1].shape[0])(t, a)),
    Bad("fused_moe", "topk_ids", "minus_one", _set_entry(1, -1)),
]

SCALAR_CASES = [
    *[Bad(op, "eps", what, lambda t, a, v=v: v) for op in ("rms_norm", "fused_add_rms_norm", "layer_norm")
      for what, v in (("negative", -1e-6), ("nan", float("nan")), ("str", "1e-6"), ("list", [1e-6]),
                      ("none", None))],
    *[Bad("topk_softmax", "k", what, lambda t, a, v=v: v)
      for what, v in (("zero", 0), ("over_experts", 65), ("float", 2.0), ("bool", True), ("list", [2]), ("none", None))],
    *[Bad("topk_softmax", "renormalize", what, lambda t, a, v=v: v) for what, v in (("int", 1), ("none", None))],
    *[Bad("cross_entropy", "ignore_index", what, lambda t, a, v=v: v)
      for what, v in (("float", 1.5), ("bool", True), ("list", [0]), ("none", None))],
    *[Bad("rotary_embedding", "is_neox", what, lambda t, a, v=v: v)
      for what, v in (("int", 1), ("str", "true"), ("none", None))],
]

CASES = _generic_cases() + SHAPE_CASES + VALUE_CASES + SCALAR_CASES


def test_every_tensor_argument_of_every_op_is_in_the_grid():
    assert set(TAKES) == set(SPECS), "a new op needs its row in TAKES (and its shape cases)"
    for op in SPECS:
        assert set(TAKES[op]) == set(tensor_names(op)), op
        assert primary(op) in {c.arg for c in SHAPE_CASES if c.op == op}, op


def _dispatcher_schema_refusal(exc: BaseException, case: Bad) -> bool:
    """torch's own refusal of a value the schema's type cannot hold, before any kforge code runs."""
    message = str(exc)
    return (isinstance(exc, RuntimeError) and "Expected a value of type" in message
            and f"kforge::{case.op}" in message and f"argument '{case.arg}'" in message)


# Through torch.ops.kforge.<op> the dispatcher turns these into valid values of the schema's type
# (True -> 1 for an int, 1 / None -> a bool) before kforge sees the call: only kforge.ops refuses them.
COERCED_BY_DISPATCHER = {"topk_softmax-k-bool", "topk_softmax-renormalize-int", "topk_softmax-renormalize-none",
                         "cross_entropy-ignore_index-bool", "rotary_embedding-is_neox-int",
                         "rotary_embedding-is_neox-none"}


@pytest.mark.parametrize("case, entry", [
    pytest.param(c, e, id=f"{c.id}-{e}") for c in CASES for e in ENTRIES
    if not (e == "torch_ops" and c.id in COERCED_BY_DISPATCHER)])
def test_bad_input_raises_naming_op_and_argument(case: Bad, entry):
    op = case.op
    fn = entry_point(op, entry)
    fn(*valid_args(op))  # a decision cached for the valid signature: the refusal must not lean on it
    bad = case.make()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torch warning on the way to the refusal
        try:
            fn(*bad)
        except KforgeInputError as exc:
            error = exc
        except Exception as exc:
            if entry == "torch_ops" and _dispatcher_schema_refusal(exc, case):
                return
            raise AssertionError(f"{case.id}: {type(exc).__name__} instead of KforgeInputError: {exc}") from exc
        else:
            raise AssertionError(f"{case.id}: served")
    message = str(error)
    assert error.op == op and message.startswith(f"kforge.{op}: argument '{error.arg}'"), message
    if case.expected is None:
        assert error.arg in tensor_names(op) and f"'{case.arg}'" in message, message
    else:
        assert error.arg == case.expected, message
    assert kforge.stats()["ops"][op]["calls"] == 1  # the refused call is not counted


# -- what the ops do take ----------------------------------------------------------------------------
def _defined_mixes():
    for op in SPECS:
        for name in tensor_names(op):
            if name != primary(op):
                for dtype in TAKES[op][name]:
                    yield op, name, dtype


DEFINED = list(_defined_mixes())


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("op, name, dtype", DEFINED, ids=[f"{o}-{n}-{str(d).removeprefix('torch.')}" for o, n, d in DEFINED])
def test_dtypes_the_op_takes_are_served_without_a_warning(op, name, dtype, entry):
    args = valid_args(op)
    args = replace(op, args, name, args[SPECS[op].arg_names.index(name)].to(dtype))
    warn_always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)  # ATen warns once per process: the first offender must not hide the others
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = entry_point(op, entry)(*args)
    finally:
        torch.set_warn_always(warn_always)
    assert_matches_reference(SPECS[op], args, out)


@pytest.mark.parametrize("entry", ENTRIES)
def test_targets_in_range_and_at_the_ignore_index_in_force_are_served(entry):
    fn, spec = entry_point("cross_entropy", entry), SPECS["cross_entropy"]
    x, target, _ = valid_args("cross_entropy")
    edges = target.clone()
    edges[edges < 0] = 0  # valid_args may ignore some rows: only row 2 is at -100 here
    edges[:3] = torch.tensor([0, 63, -100])
    assert_matches_reference(spec, (x, edges, -100), fn(x, edges, -100))
    assert_matches_reference(spec, (x, edges.int(), -100), fn(x, edges.int(), -100))
    with pytest.raises(KforgeInputError, match=r"argument 'target' holds -100 at \(2,\), outside \[0, 64\) or 5"):
        fn(x, edges, 5)  # -100 is not ignored when 5 is
    edges[2] = 5
    assert_matches_reference(spec, (x, edges, 5), fn(x, edges, 5))


@pytest.mark.parametrize("op, arg, index", [("cross_entropy", "target", 1), ("rotary_embedding", "positions", 2)])
def test_values_are_checked_on_the_pinned_path_too(op, arg, index):
    args = valid_args(op)
    bad = list(args)
    bad[index] = args[index].clone()
    bad[index][0] = -7
    with kforge.use(op, "vendor"):
        getattr(kforge.ops, op)(*args)
        with pytest.raises(KforgeInputError, match=f"argument '{arg}' holds -7"):
            getattr(kforge.ops, op)(*bad)


@pytest.mark.parametrize("op, index", [("cross_entropy", 1), ("rotary_embedding", 2)])
def test_values_are_not_read_off_the_cpu(op, index):
    """On any other device the values are not read (on a GPU that is a device sync per call): a
    call on meta tensors with out-of-range indices is served, its output's metadata only."""
    args = valid_args(op)
    bad = list(args)
    bad[index] = args[index].clone()
    bad[index][0] = -7
    meta = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in bad)
    out = getattr(kforge.ops, op)(*meta)
    outs = out if isinstance(out, tuple) else (out,)
    assert all(o.device.type == "meta" for o in outs)
