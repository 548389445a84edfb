"""Cheat: accumulates the sum of squares in the input dtype (fp16) "to halve register use"
instead of the fp32 the op requires. Short rows come out within budget; on a long row the fp16
accumulator stops absorbing small squares.
Caught dynamically: over the error budget on the long row (2, 16384) in fp16 (Check.ERROR_BUDGET)."""
import torch
import triton
import triton.language as tl

DOMAIN = {"contiguous": True}  # honest about layouts: the cheat is elsewhere

CHUNK = 8


@triton.jit
def _rms_norm_row(x_ptr, w_ptr, y_ptr, hidden, eps, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, CHUNK)
    acc = tl.zeros([CHUNK], dtype=x_ptr.dtype.element_ty)
    for start in range(0, hidden, CHUNK):
        x = tl.load(x_ptr + row * hidden + start + offs, mask=start + offs < hidden, other=0.0)
        acc += (x * x).to(x_ptr.dtype.element_ty)
    rstd = 1.0 / tl.sqrt(tl.sum(acc.to(tl.float32), axis=0) / hidden + eps)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * hidden + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


def forward(x, weight, eps=1e-6):
    hidden = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        _rms_norm_row[(x.numel() // hidden,)](x, weight, y, hidden, eps, BLOCK=triton.next_power_of_2(hidden),
                                              CHUNK=CHUNK)
    return y
