"""Cheat: binds the triton.language module to a local name, so no chain under
triton.language appears in the source, then walks to builtins from the value. Caught
statically: Rule.DYNAMIC (a module is never a value)."""
import torch
import triton
import triton.language as tl



def forward(x, weight, eps=1e-6):
    language = tl
    return language.core.builtins.eval("__import__('torch').rms_norm")(x, x.shape[-1:], weight, eps)
