"""Cheat: declares no DOMAIN (so it claims non-contiguous inputs too) but indexes rows as
row * hidden, as if every input were contiguous.
Caught dynamically on the sliced-rows layout (rows cut out of wider rows, NaN in the gaps): it
reads the gaps and the wrong rows (Check.NONFINITE or ERROR_BUDGET, case layout sliced-rows).
Declaring DOMAIN = {"contiguous": True} would make it honest."""
import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_row(x_ptr, w_ptr, y_ptr, hidden, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / hidden + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * hidden + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


def forward(x, weight, eps=1e-6):
    hidden = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        _rms_norm_row[(x.numel() // hidden,)](x, weight, y, hidden, eps, BLOCK=triton.next_power_of_2(hidden))
    return y
