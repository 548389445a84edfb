"""Cheat (or the classic off-by-one): launches one program too few and never writes the last row.
Caught dynamically: the last row still holds the NaN poison (Check.UNWRITTEN, "wrote only part
of the output: NaN at index (3, 0)")."""
import torch
import triton
import triton.language as tl

DOMAIN = {"contiguous": True}  # honest about layouts: the cheat is elsewhere


@triton.jit
def _softmax_row(x_ptr, y_ptr, cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < cols
    x = tl.load(x_ptr + row * cols + offs, mask=mask, other=-float("inf")).to(tl.float32)
    e = tl.exp(x - tl.max(x, axis=0))
    tl.store(y_ptr + row * cols + offs, (e / tl.sum(e, axis=0)).to(y_ptr.dtype.element_ty), mask=mask)


def forward(x):
    cols = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rows = x.numel() // cols if cols else 0
    if rows > 1:
        _softmax_row[(rows - 1,)](x, y, cols, BLOCK=triton.next_power_of_2(cols))
    return y
