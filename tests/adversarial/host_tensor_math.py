"""Cheat: does the residual add with torch on the host (x + residual) and only the norm in a
kernel, so part of the work is timed as ATen's.
Caught statically: Rule.TORCH (arithmetic on tensors x and residual in host code)."""
import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_row(h_ptr, w_ptr, y_ptr, hidden, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    h = tl.load(h_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / hidden + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * hidden + cols, (h * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


def forward(x, residual, weight, eps=1e-6):
    h = x + residual
    y = torch.empty_like(h)
    hidden = x.shape[-1]
    if x.numel():
        _rms_norm_row[(x.numel() // hidden,)](h, weight, y, hidden, eps, BLOCK=triton.next_power_of_2(hidden))
    return y, h
