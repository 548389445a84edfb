"""Cheat: calls a @triton.jit function directly as Python. Under the interpreter that runs
its body as host code, which the host rules never checked because it is a kernel: here it calls
torch.rms_norm through a kernel parameter. Caught statically: Rule.KERNEL_CALL (a kernel is
only launched, kernel[grid](...))."""
import torch
import triton
import triton.language as tl


@triton.jit
def _compute(x, weight, eps, vendor):
    return vendor(x, weight, eps)


def forward(x, weight, eps=1e-6):
    return _compute(x, weight, eps, max)
