"""Pure functions from a call to its dispatch key, and the rule for which records may serve it.

A record speaks for its own key and, within the limits below, for calls near it. Per problem dim:
  - *exact dims* (the op's `exact_dims`; every dim of an op with `fixed_shapes`, such as a
    KernelBench file whose sizes cannot be varied): the call's value must equal the record's, and
    must be among the values its correctness evidence verified. Nothing near is served.
  - *the other dims* (rows, tokens, m: the leading dims a kernel's grid is sized by): the call is
    served only inside what the record's evidence verified, never beyond it: some verified
    problem with the call's exact dims must be at least as large as the call on every one of
    them (`reaches`). A kernel whose grid was fixed for the 16 rows it was verified at is never
    handed 32; fewer rows than verified may be served (a grid sized by the row count covers
    them, and the evaluator's own shapes include small ones). Within that, the record's key
    must lie within a factor of `MAX_RATIO` (4) of the call's on each of these dims: its timing
    speaks for similar sizes only.
Nearest-shape rule (for a call whose exact problem shape has no record): candidates are the
measured shapes with the same dtype signature and number of dims, equal on every exact dim,
within `MAX_RATIO` on the others, and with at least one record whose evidence reaches the call
(`router.policy.rank`); the candidate with the smallest sum of |log2(call / measured)| wins; ties
go to the larger shape, whose kernel was tuned for at least as much parallel work. No candidate:
the call is a miss (served by vendor, logged for generation, which verifies at that shape).
Zero-sized dims count as 1 for the distance (calls with no elements never reach the table:
vendor returns the empty result, `is_empty`).
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from kforge.records import CallInfo, DispatchKey, Problem
from kforge.specs import OpSpec

MAX_RATIO = 4.0


def dtype_signature(args: tuple, tensor_args: tuple[int, ...]) -> str:
    return ",".join(str(args[i].dtype).removeprefix("torch.") for i in tensor_args)


def alignment(ptr_low_bits: int) -> int:
    """Largest power of two <= 16 dividing an address, from the address's low four bits."""
    if ptr_low_bits == 0:
        return 16
    return ptr_low_bits & -ptr_low_bits


def call_info(spec: OpSpec, args: tuple, device: str, aligned: int | None = None) -> CallInfo:
    """The call's key and layout facts; `aligned` given for fake tensors, which have no address."""
    tensors = [args[i] for i in spec.tensor_args]
    key = DispatchKey(spec.name, device, dtype_signature(args, spec.tensor_args), tuple(spec.problem(args)))
    return CallInfo(
        key=key,
        contiguous=all(t.is_contiguous() for t in tensors),
        aligned=min(alignment(t.data_ptr() & 15) for t in tensors) if aligned is None else aligned,
        requires_grad=any(t.requires_grad for t in tensors),
    )


def exact_indices(spec: OpSpec) -> tuple[int, ...]:
    """Indices of the problem dims a record must match exactly: the op's `exact_dims`, or every
    dim when its shapes are fixed by its definition (`fixed_shapes`)."""
    if getattr(spec, "fixed_shapes", False):
        return tuple(range(len(spec.problem_dims)))
    return tuple(spec.problem_dims.index(d) for d in spec.exact_dims)


def reaches(shape: Problem, verified: Iterable[Problem], exact_idx: tuple[int, ...]) -> bool:
    """True when some verified problem has `shape`'s rank and exact dims and is at least as large
    on every other dim: the evidence of a record speaks for `shape` (see the module docstring)."""
    for v in verified:
        if len(v) == len(shape) and all(
                v[i] == shape[i] if i in exact_idx else v[i] >= shape[i] for i in range(len(shape))):
            return True
    return False


def _log2(v: int) -> float:
    return math.log2(max(v, 1))


def nearest_shape(shape: Problem, measured: Iterable[Problem], exact_idx: tuple[int, ...]) -> Problem | None:
    """The measured shape that serves `shape` under the module's rule, or None."""
    best: tuple[float, tuple, Problem] | None = None
    for m in measured:
        if len(m) != len(shape) or any(m[i] != shape[i] for i in exact_idx):
            continue
        distance = 0.0
        for i, (a, b) in enumerate(zip(shape, m)):
            if i in exact_idx:
                continue
            d = abs(_log2(a) - _log2(b))
            if d > math.log2(MAX_RATIO) + 1e-9:
                break
            distance += d
        else:
            rank = (distance, tuple(-v for v in m))  # smaller distance, then larger shape
            if best is None or rank < best[:2]:
                best = (rank[0], rank[1], m)
    return None if best is None else best[2]


def serving_shape(shape: Problem, records, exact_idx: tuple[int, ...]) -> Problem | None:
    """The measured shape whose records serve a call of `shape`: its own when measured (its
    records are then judged one by one), else the nearest measured shape with a record whose
    evidence reaches `shape`; None: a miss. `records`: those of the call's dtype signature."""
    records = list(records)
    if any(r.key.shape == shape for r in records):
        return shape
    reachable = {r.key.shape for r in records if reaches(shape, r.evidence.shapes, exact_idx)}
    return nearest_shape(shape, reachable, exact_idx)


def largest_verified(shape: Problem, verified: Iterable[Problem], exact_idx: tuple[int, ...]) -> Problem | None:
    """Of the verified problems with `shape`'s rank and exact dims, the one with the most elements
    (for messages that say how far a record's evidence goes)."""
    same = [tuple(v) for v in verified if len(v) == len(shape) and all(v[i] == shape[i] for i in exact_idx)]
    return max(same, key=lambda v: (math.prod(v), v), default=None)


def is_empty(args: tuple, tensor_args: tuple[int, ...]) -> bool:
    return any(isinstance(args[i], torch.Tensor) and args[i].numel() == 0 for i in tensor_args)
