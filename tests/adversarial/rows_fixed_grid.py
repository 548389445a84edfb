"""rms_norm with its grid fixed for the shape it was tuned on (a program per row, GRID_ROWS
programs), rows masked: right at up to GRID_ROWS rows, and rows past them are never written.
The issue's kernel was fixed for 2048x5120 and served at 4096x5120; here GRID_ROWS = 16 keeps it
small enough for the interpreter. Verification at 16 rows (and the evaluator's smaller secret
shapes) accepts it: only the router's rule stops it (never more rows than were verified)."""
import torch
import triton
import triton.language as tl

DOMAIN = {"dtypes": ["float32,float32"], "contiguous": True, "align": 1}

GRID_ROWS = 16  # "the batch it will see"


@triton.jit
def _rms_norm_row(x_ptr, w_ptr, y_ptr, rows, hidden, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = (cols < hidden) & (row + cols * 0 < rows)
    x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / hidden + eps)
    w = tl.load(w_ptr + cols, mask=cols < hidden, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * hidden + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


def forward(x, weight, eps=1e-6):
    hidden = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    rows = x.numel() // hidden
    _rms_norm_row[(GRID_ROWS,)](x, weight, y, rows, hidden, eps, BLOCK=max(triton.next_power_of_2(hidden), 16))
    return y
