"""silu_and_mul with a fixed grid: PROGRAMS programs stride over the tiles of (ROWS rows, BLOCK
columns) of y, so a prefill-sized input is one wave with no tail and no per-block launch cost.
Elementwise, fp32 math (fp64 for fp64 input), one rounding.

x: (..., 2d) contiguous, bf16/fp16/fp32/fp64; returns y = silu(x[..., :d]) * x[..., d:] of shape
(..., d). Memory-bound: 2d elements read and d written per row, each once. Tiles are numbered
along rows, so in each round of the loop the programs together stream one contiguous stretch.
"""
import torch
import triton
import triton.language as tl

DOMAIN = {
    "dtypes": ["bfloat16", "float16", "float32", "float64"],
    "contiguous": True,
    "align": 1,
    # Column offsets are int32 inside a row (row offsets are int64).
    "dims": {"d": [1, 2**30]},
}

# Tunables. PROGRAMS: the grid (8 per SM of an H100 as shipped: with 8 warps each, a full SM's
# 64 warps keep enough loads in flight). BLOCK: columns per tile, at most (a power of two; short
# rows use the next power of two of d); rows shorter than MIN_TILE are packed MIN_TILE // block
# to a tile.
PROGRAMS = 1056
BLOCK = 2048
MIN_BLOCK = 16
MIN_TILE = 2048  # elements per tile, at least (a power of two)
NUM_WARPS = ((2048, 8), (512, 4), (0, 2))  # (tile elements at least, num_warps)

# What the catalog provider may change (kforge.gen.providers.catalog): name -> choices.
SEARCH_SPACE = {
    "PROGRAMS": [264, 528, 1056, 2112],
    "BLOCK": [1024, 2048, 4096],
    "MIN_TILE": [1024, 2048, 4096],
    "NUM_WARPS": [
        ((2048, 8), (512, 4), (0, 2)),
        ((4096, 16), (1024, 8), (0, 4)),
        ((4096, 8), (1024, 4), (0, 2)),
    ],
}


@triton.jit
def _silu_and_mul_strided(x_ptr, y_ptr, rows, d, col_blocks, tiles, ROWS: tl.constexpr, BLOCK: tl.constexpr,
                          FP64: tl.constexpr):
    acc = tl.float64 if FP64 else tl.float32  # a bool, not a dtype: the launcher records constexprs by value
    cols = tl.arange(0, BLOCK)[None, :]  # (1, BLOCK)
    lanes = tl.arange(0, ROWS)[:, None]  # (ROWS, 1)
    for tile in range(tl.program_id(0), tiles, tl.num_programs(0)):
        group = tile // col_blocks
        col = (tile - group * col_blocks) * BLOCK + cols  # (1, BLOCK)
        row = group.to(tl.int64) * ROWS + lanes  # (ROWS, 1)
        mask = (row < rows) & (col < d)  # (ROWS, BLOCK)
        gate_row = x_ptr + row * (2 * d)  # the up half starts d further on
        gate = tl.load(gate_row + col, mask=mask, other=0.0).to(acc)
        up = tl.load(gate_row + d + col, mask=mask, other=0.0).to(acc)
        # silu(g) = g / (1 + exp(-g)): -inf gives NaN and NaN stays NaN, as torch's silu does.
        y = gate / (1.0 + tl.exp(-gate)) * up
        tl.store(y_ptr + row * d + col, y.to(y_ptr.dtype.element_ty), mask=mask)


def _num_warps(tile):
    for at_least, warps in NUM_WARPS:
        if tile >= at_least:
            return warps
    return 4


def forward(x):
    d = x.shape[-1] // 2
    y = torch.empty((*x.shape[:-1], d), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    rows = y.numel() // d
    block = min(max(triton.next_power_of_2(d), MIN_BLOCK), BLOCK)
    # Never more rows to a tile than there are: one decode row would leave half of a 2-row tile idle.
    per_program = min(max(MIN_TILE // block, 1), triton.next_power_of_2(rows))
    col_blocks = triton.cdiv(d, block)
    tiles = triton.cdiv(rows, per_program) * col_blocks
    _silu_and_mul_strided[(min(tiles, PROGRAMS),)](x, y, rows, d, col_blocks, tiles, ROWS=per_program, BLOCK=block,
                                                   FP64=x.dtype == torch.float64, num_warps=_num_warps(per_program * block))
    return y
