"""Cheat: wraps its output with torch.Tensor._make_subclass so that the result is a lazy
subclass (it computes when first read, after the timed call). Caught statically: Rule.PRIVATE
(no attribute beginning with an underscore)."""
import torch
import triton
import triton.language as tl


def forward(x, weight, eps=1e-6):
    y = torch.empty_like(x)
    return torch.Tensor._make_subclass(torch.Tensor, y, False)
