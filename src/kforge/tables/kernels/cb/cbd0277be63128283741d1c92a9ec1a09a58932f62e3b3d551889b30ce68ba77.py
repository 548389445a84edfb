"""softmax over the last dim, rows in registers: a program per row, or ROWS short rows per
program; fp32 math.

x: (..., cols) contiguous, bf16/fp16/fp32; returns y like x. Reads x once, writes y once; for
rows too long for registers see softmax_online.py.
"""
import torch
import triton
import triton.language as tl

DOMAIN = {
    "dtypes": ["bfloat16", "float16", "float32"],
    "contiguous": True,
    "align": 1,
    # The whole row lives in registers: past 64K elements it spills; softmax_online takes over.
    "dims": {"cols": [1, 65536]},
}

# Tunables. BLOCK is the row length rounded up to a power of two (a tl.arange must be one). Rows
# shorter than MIN_TILE are packed MIN_TILE // BLOCK to a program (H100 GPU time, 65536x128 bf16:
# 41.2 us one row per program, 8.5 us eight). Warps grow with the tile so each thread holds at
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
def _softmax_row(x_ptr, y_ptr, cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < cols
    x = tl.load(x_ptr + row * cols + offs, mask=mask, other=-float("inf")).to(tl.float32)
    # A NaN anywhere in the row reaches every output through the sum, as in the reference.
    e = tl.exp(x - tl.max(x, axis=0))
    y = e / tl.sum(e, axis=0)
    tl.store(y_ptr + row * cols + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_rows(x_ptr, y_ptr, rows, cols, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]  # (ROWS, 1)
    offs = tl.arange(0, BLOCK)[None, :]  # (1, BLOCK)
    # Rows past the end re-read the last row (and are not stored): masking them to -inf would
    # compute exp(-inf - -inf) = NaN in lanes nobody reads.
    src = tl.minimum(row, rows - 1) * cols + offs
    x = tl.load(x_ptr + src, mask=offs < cols, other=-float("inf")).to(tl.float32)  # (ROWS, BLOCK)
    e = tl.exp(x - tl.max(x, axis=1, keep_dims=True))
    y = e / tl.sum(e, axis=1, keep_dims=True)
    tl.store(y_ptr + row * cols + offs, y.to(y_ptr.dtype.element_ty), mask=(row < rows) & (offs < cols))


def _num_warps(tile):
    for at_least, warps in NUM_WARPS:
        if tile >= at_least:
            return warps
    return 4


def forward(x):
    cols = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    rows = x.numel() // cols
    block = max(triton.next_power_of_2(cols), MIN_BLOCK)
    per_program = max(MIN_TILE // block, 1)
    if per_program == 1:
        _softmax_row[(rows,)](x, y, cols, BLOCK=block, num_warps=_num_warps(block))
    else:
        _softmax_rows[(triton.cdiv(rows, per_program),)](x, y, rows, cols, ROWS=per_program, BLOCK=block,
                                                         num_warps=_num_warps(per_program * block))
    return y
