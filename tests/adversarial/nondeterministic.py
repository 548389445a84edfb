"""Cheat (stand-in for split-row atomics, whose order changes from run to run on a GPU): sums the
row in chunks of 8 on one call and of 16 on the next. Each result is within budget; two runs on
the same input differ in their last bits.
Caught dynamically: the repeated call is not bitwise equal to the first (Check.NONDETERMINISTIC)."""
import torch
import triton
import triton.language as tl

DOMAIN = {"contiguous": True}  # honest about layouts: the cheat is elsewhere

_calls = [0]


@triton.jit
def _rms_norm_row(x_ptr, w_ptr, y_ptr, hidden, eps, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, CHUNK)
    acc = tl.zeros([CHUNK], dtype=tl.float32)
    for start in range(0, hidden, CHUNK):
        x = tl.load(x_ptr + row * hidden + start + offs, mask=start + offs < hidden, other=0.0).to(tl.float32)
        acc += x * x
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / hidden + eps)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * hidden + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


def forward(x, weight, eps=1e-6):
    _calls[0] += 1
    hidden = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        _rms_norm_row[(x.numel() // hidden,)](x, weight, y, hidden, eps, BLOCK=triton.next_power_of_2(hidden),
                                              CHUNK=8 * (1 + _calls[0] % 2))
    return y
