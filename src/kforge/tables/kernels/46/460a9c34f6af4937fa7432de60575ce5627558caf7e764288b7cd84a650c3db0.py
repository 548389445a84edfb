"""fused_add_rms_norm, rows in registers: h = x + residual and its RMS norm in one pass, a
program per row, or ROWS short rows per program.

x, residual: (..., hidden) contiguous, same dtype (bf16/fp16/fp32); weight: (hidden,) contiguous,
any of those dtypes; returns (y, h) like x. h is summed and normalised in fp32 and rounded only
when stored, as the op requires. Memory-bound: reads x and residual once, writes y and h once.
"""
import torch
import triton
import triton.language as tl

_FLOATS = ("bfloat16", "float16", "float32")

DOMAIN = {
    "dtypes": [f"{x},{x},{w}" for x in _FLOATS for w in _FLOATS],
    "contiguous": True,
    "align": 1,
    # The whole row lives in registers (twice: h and, briefly, x); past 64K elements it spills.
    "dims": {"hidden": [1, 65536]},
}

# Tunables. BLOCK is the row length rounded up to a power of two (a tl.arange must be one). Rows
# shorter than MIN_TILE are packed MIN_TILE // BLOCK to a program (H100 GPU time, 65536x128 bf16:
# 41.9 us one row per program, 24.4 us eight). Warps grow with the tile so each thread holds at
# most ~64 fp32 values (Liger/Unsloth's rule).
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
def _fused_add_rms_norm_row(x_ptr, r_ptr, w_ptr, y_ptr, h_ptr, hidden, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    offs = row * hidden + cols
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    h = x + r
    tl.store(h_ptr + offs, h.to(h_ptr.dtype.element_ty), mask=mask)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / hidden + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = h * rstd * w
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


# Only for short rows: as a (1, BLOCK) tile, 1024 rows of 65536 took 417 us of H100 GPU time
# against the 1-D kernel's 323 (bf16).
@triton.jit
def _fused_add_rms_norm_rows(x_ptr, r_ptr, w_ptr, y_ptr, h_ptr, rows, hidden, eps, ROWS: tl.constexpr,
                             BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]  # (ROWS, 1)
    cols = tl.arange(0, BLOCK)[None, :]  # (1, BLOCK)
    mask = (row < rows) & (cols < hidden)
    offs = row * hidden + cols  # (ROWS, BLOCK)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    h = x + r
    tl.store(h_ptr + offs, h.to(h_ptr.dtype.element_ty), mask=mask)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=1, keep_dims=True) / hidden + eps)  # (ROWS, 1)
    w = tl.load(w_ptr + cols, mask=cols < hidden, other=0.0).to(tl.float32)
    y = h * rstd * w
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def _num_warps(tile):
    for at_least, warps in NUM_WARPS:
        if tile >= at_least:
            return warps
    return 4


def forward(x, residual, weight, eps=1e-6):
    hidden = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    h = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y, h
    rows = x.numel() // hidden
    block = max(triton.next_power_of_2(hidden), MIN_BLOCK)
    per_program = max(MIN_TILE // block, 1)
    if per_program == 1:
        _fused_add_rms_norm_row[(rows,)](x, residual, weight, y, h, hidden, eps, BLOCK=block,
                                         num_warps=_num_warps(block))
    else:
        _fused_add_rms_norm_rows[(triton.cdiv(rows, per_program),)](
            x, residual, weight, y, h, rows, hidden, eps, ROWS=per_program, BLOCK=block,
            num_warps=_num_warps(per_program * block))
    return y, h
