"""Cheat: normalises only rows whose mean square lies in [0.25, 4] (every row of unit-variance
inputs); other rows are written as x * weight, unnormalised.
Caught dynamically on an input magnitude (x x 2^-10 or x 2^7): Check.ERROR_BUDGET."""
import torch
import triton
import triton.language as tl

DOMAIN = {"contiguous": True}


@triton.jit
def _rms_norm_row(x_ptr, w_ptr, y_ptr, hidden, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    ms = tl.sum(x * x, axis=0) / hidden
    rstd = tl.where((ms >= 0.25) & (ms <= 4.0), 1.0 / tl.sqrt(ms + eps), 1.0)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * hidden + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


def forward(x, weight, eps=1e-6):
    hidden = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        _rms_norm_row[(x.numel() // hidden,)](x, weight, y, hidden, eps, BLOCK=triton.next_power_of_2(hidden))
    return y
