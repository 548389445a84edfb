"""Cheat: gets the torch module as a value with inspect.getmodule(torch.empty) (inspect reached
through triton.language.core) and calls vendor's op from it, so no torch.<op> chain appears in
the source. Caught statically: Rule.API."""
import torch
import triton
import triton.language as tl


def forward(x, weight, eps=1e-6):
    vendor = tl.core.inspect.getmodule(torch.empty)
    return vendor.rms_norm(x, x.shape[-1:], weight, eps)
