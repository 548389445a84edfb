"""Argument checks shared by op specs. Each raises `KforgeInputError` naming op and argument.

An op's `check` runs once per distinct call signature (the router caches its decision): it may
look at types, dtypes, shapes and devices, never at values. `in_range` reads values (indices,
positions); an op's `check_values` calls it, on every call whose tensors are on the CPU.
"""
from __future__ import annotations

import math

import torch

from kforge.errors import KforgeInputError


def floating_tensor(op: str, name: str, value, dtypes) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise KforgeInputError(op, name, f"must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise KforgeInputError(op, name, f"has dtype {value.dtype}; kforge.{op} takes {allowed}")
    return value


def same_dtype(op: str, first: str, tensor: torch.Tensor, name: str, other) -> torch.Tensor:
    """`other` must be a tensor of `tensor`'s dtype (a second input of the same stream)."""
    if not isinstance(other, torch.Tensor):
        raise KforgeInputError(op, name, f"must be a torch.Tensor, got {type(other).__name__}")
    if other.dtype != tensor.dtype:
        raise KforgeInputError(op, name, f"has dtype {other.dtype} but '{first}' has {tensor.dtype}; they must match")
    return other


def min_rank(op: str, name: str, value: torch.Tensor, rank: int) -> None:
    if value.dim() < rank:
        raise KforgeInputError(op, name, f"must have at least {rank} dimension(s), got shape {tuple(value.shape)}")


def same_device(op: str, first: str, tensor: torch.Tensor, name: str, other: torch.Tensor) -> None:
    if other.device != tensor.device:
        raise KforgeInputError(op, name, f"is on {other.device} but '{first}' is on {tensor.device}")


def same_shape(op: str, first: str, tensor: torch.Tensor, name: str, other: torch.Tensor) -> None:
    if other.shape != tensor.shape:
        raise KforgeInputError(op, name, f"has shape {tuple(other.shape)} but '{first}' has {tuple(tensor.shape)}")


def vector_of(op: str, name: str, value: torch.Tensor, size: int, of: str) -> None:
    if value.dim() != 1 or value.shape[0] != size:
        raise KforgeInputError(op, name, f"must have shape ({size},) to match the last dim of '{of}', got {tuple(value.shape)}")


def epsilon(op: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise KforgeInputError(op, name, f"must be a finite non-negative number, got {value!r}")


def in_range(op: str, name: str, values: torch.Tensor, high: int, of: str, ignore: int | None = None) -> None:
    """Every entry of the CPU integer tensor `values` in [0, high), except entries equal to `ignore`."""
    if not values.numel():
        return
    # One pass for the common case, read as two Python ints (comparing the 0-dim tensors themselves
    # cost 2.8 us more per call on a 2-core CPU); with `ignore` among them, one more pass over the
    # values with `ignore` taken for 0 (always in range: `high` is a size, at least 1).
    low_value, high_value = (int(v) for v in torch.aminmax(values))
    if low_value >= 0 and high_value < high:
        return
    if ignore is not None and ignore in (low_value, high_value) and high > 0:
        low_value, high_value = (int(v) for v in torch.aminmax(torch.where(values == ignore, 0, values)))
        if low_value >= 0 and high_value < high:
            return
    bad = (values < 0) | (values >= high)
    if ignore is not None:
        bad &= values != ignore
    if bad.any():
        at = tuple(int(i) for i in bad.nonzero()[0])
        allowed = f"[0, {high})" + ("" if ignore is None else f" or {ignore}")
        raise KforgeInputError(op, name, f"holds {int(values[at])} at {at}, outside {allowed} ({of})")
