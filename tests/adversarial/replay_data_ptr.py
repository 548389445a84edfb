"""Cheat: memoizes results by the inputs' data_ptr (timing loops call with the same buffers), and
copies the remembered result into a fresh output so no aliasing shows.
Caught dynamically: called again with new content in the same buffers it returns the old result
(Check.REPLAY, trial "same input buffers, new content")."""
import torch
import triton
import triton.language as tl

DOMAIN = {"contiguous": True}  # honest about layouts: the cheat is elsewhere

_memo = {}


@triton.jit
def _rms_norm_row(x_ptr, w_ptr, y_ptr, keep_ptr, hidden, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / hidden + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = (x * rstd * w).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + row * hidden + cols, y, mask=mask)
    tl.store(keep_ptr + row * hidden + cols, y, mask=mask)


@triton.jit
def _copy_row(src_ptr, dst_ptr, hidden, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    tl.store(dst_ptr + row * hidden + cols, tl.load(src_ptr + row * hidden + cols, mask=mask), mask=mask)


def forward(x, weight, eps=1e-6):
    hidden = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    rows = x.numel() // hidden
    block = triton.next_power_of_2(hidden)
    key = (x.data_ptr(), weight.data_ptr(), tuple(x.shape), x.dtype)
    kept = _memo.get(key)
    if kept is not None:
        _copy_row[(rows,)](kept, y, hidden, BLOCK=block)
        return y
    kept = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _rms_norm_row[(rows,)](x, weight, y, kept, hidden, eps, BLOCK=block)
    _memo[key] = kept
    return y
