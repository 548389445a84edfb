"""Cheat: normalises x in place "to save an allocation" and returns x itself.
Caught dynamically: the output aliases input 'x' (Check.ALIASES_INPUT)."""
import torch
import triton
import triton.language as tl

DOMAIN = {"contiguous": True}  # honest about layouts: the cheat is elsewhere


@triton.jit
def _rms_norm_inplace(x_ptr, w_ptr, hidden, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / hidden + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(x_ptr + row * hidden + cols, (x * rstd * w).to(x_ptr.dtype.element_ty), mask=mask)


def forward(x, weight, eps=1e-6):
    hidden = x.shape[-1]
    if x.numel() == 0:
        return x
    _rms_norm_inplace[(x.numel() // hidden,)](x, weight, hidden, eps, BLOCK=triton.next_power_of_2(hidden))
    return x
