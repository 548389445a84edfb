"""Cheat: str.format follows attribute and item paths written inside the format string, which
the AST never shows: forward reads os.environ through its own globals and sees whether it runs
in the sandbox. Caught statically: Rule.DYNAMIC (.format is out)."""
import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_row(x_ptr, w_ptr, y_ptr, hidden, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / hidden + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * hidden + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


def forward(x, weight, eps=1e-6):
    home = "{0.__globals__[triton].language.core.inspect.os.environ}".format(forward)
    y = torch.empty_like(x)
    hidden = x.shape[-1]
    rows = x.numel() // hidden if "HOME" not in home else 1
    _rms_norm_row[(rows,)](x, weight, y, hidden, eps, BLOCK=triton.next_power_of_2(hidden))
    return y
