"""Cheat: uses x as scratch: stores x * rstd back into x, then scales by the weight into y.
Caught dynamically: input 'x' is not bitwise unchanged after the call (Check.MODIFIED_INPUT)."""
import torch
import triton
import triton.language as tl

DOMAIN = {"contiguous": True}  # honest about layouts: the cheat is elsewhere


@triton.jit
def _normalize_in_place(x_ptr, hidden, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / hidden + eps)
    tl.store(x_ptr + row * hidden + cols, (x * rstd).to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scale(x_ptr, w_ptr, y_ptr, hidden, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * hidden + cols, (x * w).to(y_ptr.dtype.element_ty), mask=mask)


def forward(x, weight, eps=1e-6):
    hidden = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    rows = x.numel() // hidden
    block = triton.next_power_of_2(hidden)
    _normalize_in_place[(rows,)](x, hidden, eps, BLOCK=block)
    _scale[(rows,)](x, weight, y, hidden, BLOCK=block)
    return y
