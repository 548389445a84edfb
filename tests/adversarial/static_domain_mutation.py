"""Cheat: DOMAIN is the one mutable container a module may hold, so this one stores its call
count inside it, and after verification switches to garbage. Caught statically:
Rule.GLOBAL_STATE (no function may use DOMAIN or SEARCH_SPACE)."""
import torch
import triton
import triton.language as tl


DOMAIN = {"dtypes": None, "contiguous": True, "align": 1, "calls": [0]}

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
    DOMAIN["calls"][0] += 1
    y = torch.empty_like(x)
    hidden = x.shape[-1]
    rows = x.numel() // hidden if DOMAIN["calls"][0] < 3000 else 1
    _rms_norm_row[(rows,)](x, weight, y, hidden, eps, BLOCK=triton.next_power_of_2(hidden))
    return y
