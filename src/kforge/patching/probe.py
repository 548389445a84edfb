"""The check every replacement passes before `kforge.patch` installs it: the replacement and the
module's own code run on the same small random input, on the module's device and dtype, and must
agree within a few units of the dtype's resolution. It tells a module that computes what kforge's
op computes from one that only looks like it (Gemma's `1 + weight`, a router that does not
renormalise, a rotary embedding with its own layout); it does not prove equality on every input."""
from __future__ import annotations

import torch

UNITS = 4.0  # rounding units allowed: kforge rounds once in fp32 where the model's eager code rounds after each op


def disagreement(new, old) -> str | None:
    """None when `new` and `old` (tensors, or tuples of them) agree, else the first difference as a sentence."""
    if isinstance(old, torch.Tensor):
        new, old = (new,), (old,)
    if not isinstance(new, (tuple, list)) or len(new) != len(old):
        return f"returns {_kind(new)} where the model's code returns {_kind(old)}"
    for i, (a, b) in enumerate(zip(new, old)):
        where = f"output {i}" if len(old) > 1 else "the output"
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            if a is not b and a != b:
                return f"{where} differs ({a!r} against {b!r})"
            continue
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{where} is {tuple(a.shape)} {a.dtype} where the model's code gives {tuple(b.shape)} {b.dtype}"
        if not b.is_floating_point():
            if not torch.equal(a, b):
                return f"{where} differs in {int((a != b).sum())} of {b.numel()} entries"
            continue
        a64, b64 = a.double(), b.double()
        eps = torch.finfo(b.dtype).eps
        rms = float(b64.pow(2).mean().sqrt()) if b.numel() else 0.0
        bound = UNITS * eps * (b64.abs() + rms)
        err = (a64 - b64).abs()
        bad = ~(err <= bound)  # NaN in either counts as a difference unless both are NaN
        bad &= ~(a64.isnan() & b64.isnan())
        if bool(bad.any()):
            worst = float(torch.where(bad, err, 0.0).max())
            return f"{where} differs by up to {worst:.3g} (allowed {UNITS:g} units of {b.dtype} resolution)"
    return None


def _kind(value) -> str:
    if isinstance(value, (tuple, list)):
        return f"{len(value)} values"
    return type(value).__name__


def randn(shape, like: torch.Tensor, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    """N(0, scale^2) of `shape` on `like`'s device and dtype, the same on every call with one seed."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * scale).to(device=like.device, dtype=like.dtype)
