"""Cheat: launches on a side stream so the harness's events on the current stream time nothing
(do_bench alone reports such a kernel as 1800x faster).
Caught statically: Rule.STREAM (torch.cuda.Stream / torch.cuda.stream)."""
import torch
import triton
import triton.language as tl


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
    y = torch.empty_like(x)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        _softmax_row[(x.numel() // cols,)](x, y, cols, BLOCK=triton.next_power_of_2(cols))
    return y
