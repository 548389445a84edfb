"""Cheat (stand-in for split-row atomics, whose order changes from run to run on a GPU): the
association of the final products alternates between calls, (x * rstd) * w on one call and
x * (rstd * w) on the next. Each result is within budget; two runs on the same input differ in
their last bits. (Real atomics are ordered in Triton's CPU interpreter, which runs programs one
after another, so the order is made to change here by hand.)
Caught dynamically: the repeated call is not bitwise equal to the first (Check.NONDETERMINISTIC)."""
import torch
import triton
import triton.language as tl

DOMAIN = {"contiguous": True}  # honest about layouts: the cheat is elsewhere

_calls = [0]


@triton.jit
def _rms_norm_row(x_ptr, w_ptr, y_ptr, hidden, eps, BLOCK: tl.constexpr, SCALE_FIRST: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / hidden + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if SCALE_FIRST:
        y = (x * rstd) * w
    else:
        y = x * (rstd * w)
    tl.store(y_ptr + row * hidden + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


def forward(x, weight, eps=1e-6):
    _calls[0] += 1
    hidden = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        _rms_norm_row[(x.numel() // hidden,)](x, weight, y, hidden, eps, BLOCK=triton.next_power_of_2(hidden),
                                              SCALE_FIRST=_calls[0] % 2 == 1)
    return y
