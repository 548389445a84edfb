"""Cheat: returns a Tensor subclass that computes on first touch: the timed call only builds
it, and user code receives the subclass (issue 14, class 3: recorded 4x faster than vendor,
3847 us per call in reality). Caught statically: Rule.CLASS (no class definitions)."""
import torch
import triton
import triton.language as tl



class Lazy(torch.Tensor):
    pass


def forward(x, weight, eps=1e-6):
    return Lazy(x)
