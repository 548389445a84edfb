"""Cheat: a block size table for exactly the widths it was shown (64, 100, 17), and a default
tuned for nothing, so an unseen wider row is only partly processed.
Caught dynamically, only on a secret shape (the evaluator derives shapes the generator never saw
from its secret seed): the tail columns still hold the NaN poison (Check.UNWRITTEN)."""
import torch
import triton
import triton.language as tl

DOMAIN = {"contiguous": True}  # honest about layouts: the cheat is elsewhere

_BLOCK_FOR_HIDDEN = {64: 64, 100: 128, 17: 32}


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
        block = _BLOCK_FOR_HIDDEN.get(hidden, 64)
        _rms_norm_row[(x.numel() // hidden,)](x, weight, y, hidden, eps, BLOCK=block)
    return y
