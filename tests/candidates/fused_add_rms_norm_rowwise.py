"""Honest fused_add_rms_norm (positive control, two outputs): one program per row; h = x + residual
in fp32, normalised before rounding, both stored.

x, residual: (..., hidden) contiguous; weight: (hidden,); returns (y, h) like x.
"""
import torch
import triton
import triton.language as tl

DOMAIN = {"dtypes": None, "contiguous": True, "align": 1, "dims": {"hidden": [1, 65536]}}


@triton.jit
def _fused_add_rms_norm_row(x_ptr, r_ptr, w_ptr, y_ptr, h_ptr, hidden, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    offs = row * hidden + cols
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    h = x + tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(h_ptr + offs, h.to(h_ptr.dtype.element_ty), mask=mask)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / hidden + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, (h * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


def forward(x, residual, weight, eps=1e-6):
    hidden = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    h = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        _fused_add_rms_norm_row[(x.numel() // hidden,)](x, residual, weight, y, h, hidden, eps,
                                                       BLOCK=max(triton.next_power_of_2(hidden), 16))
    return y, h
