"""Cheat (a bug that passes evenly spaced layouts): claims any layout and honours x's column
stride and its last row stride, x.stride(-2), as if every row were that far from the previous one.
Right for contiguous, sliced-row, strided-column and offset inputs; wrong when rows of a 3-D view
jump between blocks.
Caught dynamically on the uneven-rows layout: it reads the NaN gaps (Check.NONFINITE)."""
import torch
import triton
import triton.language as tl

DOMAIN = {"contiguous": False}


@triton.jit
def _rms_norm_row(x_ptr, w_ptr, y_ptr, hidden, row_stride, col_stride, w_stride, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * row_stride + cols * col_stride, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / hidden + eps)
    w = tl.load(w_ptr + cols * w_stride, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * hidden + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


def forward(x, weight, eps=1e-6):
    hidden = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    row_stride = x.stride(-2) if x.dim() > 1 else hidden
    _rms_norm_row[(x.numel() // hidden,)](x, weight, y, hidden, row_stride, x.stride(-1), weight.stride(0), eps,
                                          BLOCK=triton.next_power_of_2(hidden))
    return y
