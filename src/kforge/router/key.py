"""Pure functions from a call to its dispatch key, and the nearest-shape rule.

Nearest-shape rule (for a call whose exact problem shape has no record):
  - candidates are the measured shapes with the same dtype signature, the same number of dims and
    equal values on every one of the op's `exact_dims` (e.g. the same `hidden`);
  - on the other dims, each must lie within a factor of `MAX_RATIO` (4) of the call's, and the
    candidate with the smallest sum of |log2(call / measured)| wins; ties go to the larger shape,
    whose kernel was tuned for at least as much parallel work;
  - no candidate: the call is a miss (served by vendor, logged for generation).
Zero-sized dims count as 1 for the distance.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from kforge.records import CallInfo, DispatchKey, Problem

MAX_RATIO = 4.0


def dtype_signature(args: tuple, tensor_args: tuple[int, ...]) -> str:
    return ",".join(str(args[i].dtype).removeprefix("torch.") for i in tensor_args)


def alignment(ptr_low_bits: int) -> int:
    """Largest power of two <= 16 dividing an address, from the address's low four bits."""
    if ptr_low_bits == 0:
        return 16
    return ptr_low_bits & -ptr_low_bits


def call_info(spec, args: tuple, device: str, aligned: int | None = None) -> CallInfo:
    """The call's key and layout facts; `aligned` given for fake tensors, which have no address."""
    tensors = [args[i] for i in spec.tensor_args]
    key = DispatchKey(spec.name, device, dtype_signature(args, spec.tensor_args), tuple(spec.problem(args)))
    return CallInfo(
        key=key,
        contiguous=all(t.is_contiguous() for t in tensors),
        aligned=min(alignment(t.data_ptr() & 15) for t in tensors) if aligned is None else aligned,
        requires_grad=any(t.requires_grad for t in tensors),
    )


def exact_indices(spec) -> tuple[int, ...]:
    return tuple(spec.problem_dims.index(d) for d in spec.exact_dims)


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


def is_empty(args: tuple, tensor_args: tuple[int, ...]) -> bool:
    return any(isinstance(args[i], torch.Tensor) and args[i].numel() == 0 for i in tensor_args)
