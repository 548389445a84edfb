"""Honest softmax (positive control): one program per row, the row in registers, fp32 math.

x: (..., cols) contiguous; returns y like x. DOMAIN says contiguous, so the evaluator skips the
strided layouts (the storage-offset layout, contiguous but misaligned, still runs).
"""
import torch
import triton
import triton.language as tl

DOMAIN = {"dtypes": ["float32", "float16", "bfloat16"], "contiguous": True, "align": 1,
          "dims": {"cols": [1, 65536]}}


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
    if x.numel() == 0:
        return y
    block = max(triton.next_power_of_2(cols), 16)
    _softmax_row[(x.numel() // cols,)](x, y, cols, BLOCK=block)
    return y
