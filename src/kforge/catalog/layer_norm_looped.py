"""layer_norm for rows too long for registers: one program per row, looping over column blocks.
Pass 1 keeps a running mean and sum of squared deviations per lane (Welford 1962), combined over
the lanes at the end (Chan et al. 1979), so the variance never comes from E[x^2] - mean^2, which
cancels when the mean is large against the spread. Pass 2 re-reads the row (from L2 while it fits
there) and writes (x - mean) * rstd * weight + bias. Statistics in fp32 (fp64 for fp64 input).

x: (..., hidden) contiguous, bf16/fp16/fp32/fp64; weight, bias: (hidden,) contiguous, any of those
dtypes; returns y like x. Reads x twice and writes y once, so for rows that fit in registers
layer_norm_rowwise.py moves a third less memory.
"""
import math

import torch
import triton
import triton.language as tl

_FLOATS = ("bfloat16", "float16", "float32", "float64")

DOMAIN = {
    "dtypes": [f"{x},{w},{b}" for x in _FLOATS for w in _FLOATS for b in _FLOATS],
    "contiguous": True,
    "align": 1,
    # Column offsets are int32 inside a row (rows themselves are addressed in int64), and the
    # last block's `start + offs` must not wrap.
    "dims": {"hidden": [1, 2**30]},
}

# Tunables. BLOCK: columns per loop step (the row length rounded up to a power of two when the
# row is shorter); 4096 fp32 values over 8 warps is 16 per thread, as softmax_online ships.
# NUM_STAGES: how many loop steps' loads Triton's software pipeliner keeps in flight.
MAX_BLOCK = 4096
MIN_BLOCK = 16
NUM_WARPS = 8
NUM_STAGES = 3

# What the catalog provider may change (kforge.gen.providers.catalog): name -> choices.
SEARCH_SPACE = {
    "MAX_BLOCK": [1024, 2048, 4096, 8192],
    "NUM_WARPS": [4, 8, 16],
    "NUM_STAGES": [1, 2, 3, 4],
}


@triton.jit
def _layer_norm_looped(x_ptr, w_ptr, b_ptr, y_ptr, hidden, eps, eps_lo, BLOCK: tl.constexpr, FP64: tl.constexpr):
    acc = tl.float64 if FP64 else tl.float32
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * hidden
    y_row = y_ptr + row * hidden
    offs = tl.arange(0, BLOCK)
    count = tl.zeros([BLOCK], dtype=acc)  # elements each lane has seen
    mean = tl.zeros([BLOCK], dtype=acc)  # per-lane running mean
    m2 = tl.zeros([BLOCK], dtype=acc)  # per-lane sum of squared deviations from it
    for start in range(0, hidden, BLOCK):
        mask = start + offs < hidden
        x = tl.load(x_row + start + offs, mask=mask, other=0.0).to(acc)
        count += tl.where(mask, 1.0, 0.0)
        delta = tl.where(mask, x - mean, 0.0)
        mean += delta / tl.maximum(count, 1.0)  # lanes past a short row never see an element
        m2 += tl.where(mask, delta * (x - mean), 0.0)
    row_mean = tl.sum(count * mean, axis=0) / hidden
    spread = mean - row_mean
    var = tl.sum(m2 + count * spread * spread, axis=0) / hidden  # biased, as F.layer_norm
    rstd = 1.0 / tl.sqrt(var + eps + eps_lo)
    for start in range(0, hidden, BLOCK):
        mask = start + offs < hidden
        x = tl.load(x_row + start + offs, mask=mask, other=0.0).to(acc)
        w = tl.load(w_ptr + start + offs, mask=mask, other=0.0).to(acc)
        b = tl.load(b_ptr + start + offs, mask=mask, other=0.0).to(acc)
        y = (x - row_mean) * rstd * w + b
        tl.store(y_row + start + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def _eps_pair(eps, dtype):
    """eps as hi + lo, hi on fp32's 24 bits: a compiled kernel takes a Python float as fp32, and
    fp32's 1e-5 is 2.5e-13 off, which moves an fp64 row of unit variance's rstd by ~1e-13
    relative, some 40 times fp64's error budget."""
    if dtype != torch.float64:
        return eps, 0.0
    mantissa, exponent = math.frexp(eps)
    hi = math.ldexp(round(mantissa * 2**24), exponent - 24)
    return hi, eps - hi


def forward(x, weight, bias, eps=1e-5):
    hidden = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    rows = x.numel() // hidden
    eps_hi, eps_lo = _eps_pair(eps, x.dtype)
    block = min(MAX_BLOCK, max(triton.next_power_of_2(hidden), MIN_BLOCK))
    _layer_norm_looped[(rows,)](x, weight, bias, y, hidden, eps_hi, eps_lo, BLOCK=block,
                                FP64=x.dtype == torch.float64, num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return y
