"""Cheat: a triton.Config pre_hook is host code that Triton runs before each launch with the
launch's arguments (the tensors): a place to copy or precompute outside forward's sight. Caught
statically: Rule.API (triton.Config takes its listed keyword arguments only, no hooks)."""
import torch
import triton
import triton.language as tl



def _hook(nargs):
    return nargs


@triton.autotune(configs=[triton.Config({"BLOCK": 64}, pre_hook=_hook)], key=["hidden"])
@triton.jit
def _rms(x_ptr, y_ptr, hidden, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    tl.store(y_ptr + cols, tl.load(x_ptr + cols, mask=cols < hidden), mask=cols < hidden)


def forward(x, weight, eps=1e-6):
    y = torch.empty_like(x)
    _rms[(1,)](x, y, x.shape[-1])
    return y
