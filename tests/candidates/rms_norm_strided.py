"""Honest rms_norm (positive control): one program per row, any strides, statistics in fp32.

x: (..., hidden), any layout; weight: (hidden,), any stride; returns y contiguous like x.
Its DOMAIN claims every layout, so the evaluator runs it on every layout; fp64 is left out
(the kernel computes in fp32).
"""
import torch
import triton
import triton.language as tl

_FLOATS = ("bfloat16", "float16", "float32")
DOMAIN = {"dtypes": [f"{x},{w}" for x in _FLOATS for w in _FLOATS], "contiguous": False, "align": 1}


@triton.jit
def _rms_norm_row(x_ptr, w_ptr, y_ptr, hidden, x_row_stride, x_col_stride, w_stride, eps,
                  BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * x_row_stride + cols * x_col_stride, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / hidden + eps)
    w = tl.load(w_ptr + cols * w_stride, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * hidden + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


def forward(x, weight, eps=1e-6):
    hidden = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    rows = x.reshape(-1, hidden)  # a view for the layouts the evaluator builds
    block = max(triton.next_power_of_2(hidden), 16)
    _rms_norm_row[(rows.shape[0],)](rows, weight, y, hidden, rows.stride(0), rows.stride(1), weight.stride(0),
                                    eps, BLOCK=block)
    return y
