"""Cheat: keeps what its output memory already holds wherever it looks like a result (finite and
small, as the last call's output at the same address would be) and computes only the rest: honest
whenever fresh memory is NaN, stale in production.
Caught dynamically on a call whose fresh memory holds finite garbage: the output changes with the
poison (Check.UNWRITTEN)."""
import torch
import triton
import triton.language as tl

DOMAIN = {"contiguous": True}


@triton.jit
def _rms_norm_row(x_ptr, w_ptr, y_ptr, hidden, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    old = tl.load(y_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / hidden + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = tl.where((old == old) & (tl.abs(old) < 8.0), old, x * rstd * w)
    tl.store(y_ptr + row * hidden + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


def forward(x, weight, eps=1e-6):
    hidden = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        _rms_norm_row[(x.numel() // hidden,)](x, weight, y, hidden, eps, BLOCK=triton.next_power_of_2(hidden))
    return y
