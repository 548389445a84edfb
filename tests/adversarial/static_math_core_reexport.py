"""Cheat: triton.language.math is a public math library, but it re-exports core (and through
it builtins): eval reached from an allowed module. Caught statically: Rule.API (only the math
library's own functions are allowed, never its module re-exports)."""
import torch
import triton
import triton.language as tl


def forward(x, weight, eps=1e-6):
    return tl.math.core.builtins.eval("__import__('torch').rms_norm")(x, x.shape[-1:], weight, eps)
