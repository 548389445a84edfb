"""The input sets a timer rotates through, the random picks of checked calls, and the small helpers
every timer shares (rotation order, output clones, quantiles)."""
from __future__ import annotations

import math
import random
import statistics
from typing import Any, Callable, Mapping

import torch

from kforge.evaluate.timing.clock import device_of, l2_bytes
from kforge.evaluate.timing.result import Check, Inputs, MakeArgs, TimedCall

ROTATE_L2 = 2  # rotated input sets together exceed this many L2s
MAX_SETS = 64
CHECK_CALLS = 3  # timed calls of each function whose outputs `check` sees


class InputSets:
    """The input sets a timer rotates through (`sets[i % n]` for call i), and fresh ones."""

    def __init__(self, inputs: Inputs, sets: int | None, *, rotate: bool):
        if callable(inputs):
            self.make: MakeArgs | None = inputs
            first = tuple(inputs(0))
            self.device = device_of(first)
            n = sets if sets is not None else (self._auto_sets(first) if rotate else 1)
            if n < 1:
                raise ValueError(f"sets must be >= 1, got {n}")
            self.sets = [first] + [tuple(inputs(i)) for i in range(1, n)]
        else:
            if not isinstance(inputs, (tuple, list)):
                raise TypeError(f"timer inputs must be an argument tuple or make_args(i), got {type(inputs).__name__}")
            if sets not in (None, 1):
                raise ValueError("rotating among several input sets needs make_args(i), not one argument tuple")
            self.make = None
            self.sets = [tuple(inputs)]
            self.device = device_of(self.sets[0])
        self._next_fresh = len(self.sets)

    def _auto_sets(self, first: tuple) -> int:
        if self.device.type != "cuda":
            return 1
        nbytes = sum(a.numel() * a.element_size() for a in first if isinstance(a, torch.Tensor))
        l2 = l2_bytes(self.device)
        return max(1, min(MAX_SETS, math.ceil(ROTATE_L2 * l2 / max(nbytes, 1))))

    def __getitem__(self, i: int) -> tuple:
        return self.sets[i % len(self.sets)]

    def refresh(self, i: int) -> tuple:
        """Overwrite, in place, the tensors of the set call `i` uses with a never-seen set and
        return that set (an untouched copy of what call `i` will see). Without make_args: the
        set itself."""
        if self.make is None:
            return self[i]
        fresh = tuple(self.make(self._next_fresh))
        self._next_fresh += 1
        with torch.no_grad():
            for dst, src in zip(self[i], fresh):
                if isinstance(dst, torch.Tensor):
                    dst.copy_(src)
        return fresh


def checked_picks(names, reps: int, per_fn: int) -> set[tuple[str, int]]:
    """(name, rep) of the timed calls whose outputs are checked: random, so unpredictable."""
    rng = random.SystemRandom()
    return {(name, rep) for name in names for rep in rng.sample(range(reps), min(per_fn, reps))}


def rotated(fns: Mapping[str, Callable], r: int) -> list[tuple[str, Callable]]:
    items = list(fns.items())
    k = r % len(items)
    return items[k:] + items[:k]


def clone(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.detach().clone()
    if isinstance(out, (tuple, list)):
        return type(out)(clone(o) for o in out)
    if isinstance(out, dict):
        return {k: clone(v) for k, v in out.items()}
    return out


def quantiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        values = list(values) * 2
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    return deciles[1], deciles[4], deciles[7]


def run_check(check: Check | None, kept: list[TimedCall]) -> None:
    if check is not None:
        check(kept)
