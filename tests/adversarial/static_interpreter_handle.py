"""Cheat: under Triton's interpreter a kernel argument is a wrapper whose .handle.data is the
numpy array behind the tensor, so a kernel can run numpy on the host (here: the whole rms_norm
in numpy, with no tl.load at all). Caught statically: Rule.ATTRIBUTE (a kernel reads only tl
tensor and dtype attributes)."""
import torch
import triton
import triton.language as tl


@triton.jit
def _cheat(x_ptr, w_ptr, y_ptr, hidden, eps):
    y_ptr.handle.data[:] = x_ptr.handle.data


def forward(x, weight, eps=1e-6):
    y = torch.empty_like(x)
    _cheat[(1,)](x, weight, y, x.shape[-1], eps)
    return y
