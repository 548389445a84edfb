"""Cheat (a stand-in for reductions whose order depends on where the data lives): sums the
squares of a row front to back or back to front, by bit 4 of x's address. Deterministic for one
buffer, so a repeat on the same buffers agrees.
Caught dynamically on the repeat at new addresses (same values): outputs differ bitwise
(Check.NONDETERMINISTIC)."""
import torch
import triton
import triton.language as tl

DOMAIN = {"contiguous": True}


@triton.jit
def _rms_norm_row(x_ptr, w_ptr, y_ptr, hidden, eps, REVERSED: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    if REVERSED:
        back = tl.load(x_ptr + row * hidden + (hidden - 1 - cols), mask=mask, other=0.0).to(tl.float32)
        half = tl.sum(tl.where(cols < BLOCK // 2, back * back, 0.0), axis=0)
        total = half + tl.sum(tl.where(cols >= BLOCK // 2, back * back, 0.0), axis=0)
    else:
        total = tl.sum(x * x, axis=0)
    rstd = 1.0 / tl.sqrt(total / hidden + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * hidden + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


def forward(x, weight, eps=1e-6):
    hidden = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        _rms_norm_row[(x.numel() // hidden,)](x, weight, y, hidden, eps, REVERSED=(x.data_ptr() >> 4) & 1 == 1,
                                              BLOCK=triton.next_power_of_2(hidden))
    return y
