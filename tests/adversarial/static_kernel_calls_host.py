"""Cheat: a kernel calls a host function. Compiled, that fails; under the interpreter it runs
as Python in the middle of a launch, where the kernel rules do not see it. Caught statically:
Rule.KERNEL_CALL (kernels call only @triton.jit functions)."""
import torch
import triton
import triton.language as tl



def _host(block):
    return block


@triton.jit
def _rms(x_ptr, y_ptr, BLOCK: tl.constexpr):
    cols = tl.arange(0, _host(BLOCK))
    tl.store(y_ptr + cols, tl.load(x_ptr + cols))


def forward(x, weight, eps=1e-6):
    y = torch.empty_like(x)
    _rms[(1,)](x, y, BLOCK=triton.next_power_of_2(x.shape[-1]))
    return y
