"""layer_norm, rows in registers: a program per row, or ROWS short rows per program; fp32
statistics (fp64 for fp64 input), the variance from the centred row held in registers.

x: (..., hidden) contiguous, bf16/fp16/fp32/fp64; weight, bias: (hidden,) contiguous, any of those
dtypes; returns y like x. Memory-bound: each element of x is read once and y written once; for
rows too long for registers see layer_norm_looped.py.
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
    # The whole row lives in registers: past 64K elements it spills (and BLOCK would exceed
    # Triton's 1M-element tensor limit long before rows stop fitting).
    "dims": {"hidden": [1, 65536]},
}

# Tunables. BLOCK is the row length rounded up to a power of two (a tl.arange must be one). Rows
# shorter than MIN_TILE are packed MIN_TILE // BLOCK to a program: a program per short row is all
# launch and reduction overhead, as measured for rms_norm_rowwise (H100, 65536x128 bf16: 41.0 us
# one row per program, 8.1 us eight). Warps grow with the tile so each thread holds at most ~64
# fp32 values (Liger/Unsloth's rule).
MIN_BLOCK = 16
MIN_TILE = 1024  # elements per program, at least (a power of two)
NUM_WARPS = ((32768, 32), (8192, 16), (2048, 8), (0, 4))  # (tile elements at least, num_warps)

# What the catalog provider may change (kforge.gen.providers.catalog): name -> choices.
SEARCH_SPACE = {
    "MIN_TILE": [256, 512, 1024, 2048, 4096],
    "NUM_WARPS": [
        ((32768, 32), (8192, 16), (2048, 8), (0, 4)),
        ((32768, 16), (8192, 8), (2048, 4), (0, 2)),
        ((16384, 32), (4096, 16), (1024, 8), (0, 4)),
        ((32768, 32), (8192, 16), (4096, 8), (2048, 4), (0, 1)),
    ],
}


@triton.jit
def _layer_norm_row(x_ptr, w_ptr, b_ptr, y_ptr, hidden, eps, eps_lo, BLOCK: tl.constexpr, FP64: tl.constexpr):
    acc = tl.float64 if FP64 else tl.float32
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0).to(acc)
    mean = tl.sum(x, axis=0) / hidden
    centred = tl.where(mask, x - mean, 0.0)
    var = tl.sum(centred * centred, axis=0) / hidden
    rstd = 1.0 / tl.sqrt(var + eps + eps_lo)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(acc)
    b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(acc)
    y = centred * rstd * w + b
    tl.store(y_ptr + row * hidden + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


# Only for short rows, as in rms_norm_rowwise: a (1, BLOCK) tile of one long row was slower there
# than the 1-D kernel (H100, 1024 rows of 65536 bf16: 190 us against 141).
@triton.jit
def _layer_norm_rows(x_ptr, w_ptr, b_ptr, y_ptr, rows, hidden, eps, eps_lo, ROWS: tl.constexpr,
                     BLOCK: tl.constexpr, FP64: tl.constexpr):
    acc = tl.float64 if FP64 else tl.float32
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]  # (ROWS, 1)
    cols = tl.arange(0, BLOCK)[None, :]  # (1, BLOCK)
    mask = (row < rows) & (cols < hidden)
    x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0).to(acc)  # (ROWS, BLOCK)
    mean = tl.sum(x, axis=1, keep_dims=True) / hidden  # (ROWS, 1)
    centred = tl.where(mask, x - mean, 0.0)
    var = tl.sum(centred * centred, axis=1, keep_dims=True) / hidden  # (ROWS, 1)
    rstd = 1.0 / tl.sqrt(var + eps + eps_lo)
    w = tl.load(w_ptr + cols, mask=cols < hidden, other=0.0).to(acc)  # (1, BLOCK)
    b = tl.load(b_ptr + cols, mask=cols < hidden, other=0.0).to(acc)
    y = centred * rstd * w + b
    tl.store(y_ptr + row * hidden + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


def _num_warps(tile):
    for at_least, warps in NUM_WARPS:
        if tile >= at_least:
            return warps
    return 4


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
    fp64 = x.dtype == torch.float64  # fp64 statistics for fp64 rows
    block = max(triton.next_power_of_2(hidden), MIN_BLOCK)
    per_program = max(MIN_TILE // block, 1)
    if per_program == 1:
        _layer_norm_row[(rows,)](x, weight, bias, y, hidden, eps_hi, eps_lo, BLOCK=block, FP64=fp64,
                                 num_warps=_num_warps(block))
    else:
        _layer_norm_rows[(triton.cdiv(rows, per_program),)](x, weight, bias, y, rows, hidden, eps_hi, eps_lo,
                                                            ROWS=per_program, BLOCK=block, FP64=fp64,
                                                            num_warps=_num_warps(per_program * block))
    return y
