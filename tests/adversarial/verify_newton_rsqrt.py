"""Cheat: the reciprocal square root by six Newton steps from 1.0, accurate for the mean squares
unit-variance inputs give (~0.6 to 1.6) and divergent beyond 3 (inf once inputs are scaled by 2
or more), and far off for tiny ones.
Caught dynamically on an input magnitude (x x 2^-10 or x 2^7): Check.NONFINITE or ERROR_BUDGET."""
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
    a = tl.sum(x * x, axis=0) / hidden + eps
    r = a * 0.0 + 1.0
    for _ in tl.static_range(6):
        r = r * (1.5 - 0.5 * a * r * r)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * hidden + cols, (x * r * w).to(y_ptr.dtype.element_ty), mask=mask)


def forward(x, weight, eps=1e-6):
    hidden = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        _rms_norm_row[(x.numel() // hidden,)](x, weight, y, hidden, eps, BLOCK=triton.next_power_of_2(hidden))
    return y
