"""Cheat: pads the row to a power of two with 0.0 instead of -inf, so the padding adds exp(0 - max)
to every row sum: exact when cols is a power of two (no padding), wrong otherwise.
Caught dynamically: over the error budget on the first shape whose cols is not a power of two
(Check.ERROR_BUDGET)."""
import torch
import triton
import triton.language as tl

DOMAIN = {"contiguous": True}  # honest about layouts: the cheat is elsewhere


@triton.jit
def _softmax_row(x_ptr, y_ptr, cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < cols
    x = tl.load(x_ptr + row * cols + offs, mask=mask, other=0.0).to(tl.float32)
    e = tl.exp(x - tl.max(x, axis=0))
    tl.store(y_ptr + row * cols + offs, (e / tl.sum(e, axis=0)).to(y_ptr.dtype.element_ty), mask=mask)


def forward(x):
    cols = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        _softmax_row[(x.numel() // cols,)](x, y, cols, BLOCK=triton.next_power_of_2(cols))
    return y
