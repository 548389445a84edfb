"""silu_and_mul, one program per tile of (ROWS rows, STEPS * BLOCK columns) of y: elementwise,
fp32 math (fp64 for fp64 input), one rounding.

x: (..., 2d) contiguous, bf16/fp16/fp32/fp64; returns y = silu(x[..., :d]) * x[..., d:] of shape
(..., d). Memory-bound: 2d elements read and d written per row, each once. The grid is 1-D over
tiles, a row's column chunks adjacent, so neighbouring programs stream neighbouring memory.
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

# Tunables. BLOCK: columns per step, at most (a power of two; short rows use the next power of
# two of d). Rows shorter than MIN_TILE are packed MIN_TILE // block to a program, as the norms'
# seeds do. STEPS: column blocks per program (unrolled, so their loads are in flight together),
# halved while the grid would have fewer than MIN_PROGRAMS programs: a decode step's 32 rows of
# 14336 in 4-block chunks would be 128 programs, under one per SM of an H100's 132.
BLOCK = 1024
MIN_BLOCK = 16
MIN_TILE = 2048  # elements per program and step, at least (a power of two)
STEPS = 4
MIN_PROGRAMS = 264
NUM_WARPS = ((4096, 8), (1024, 4), (0, 2))  # (tile elements at least, num_warps)

# What the catalog provider may change (kforge.gen.providers.catalog): name -> choices.
SEARCH_SPACE = {
    "BLOCK": [512, 1024, 2048, 4096],
    "MIN_TILE": [512, 1024, 2048, 4096],
    "STEPS": [1, 2, 4, 8],
    "MIN_PROGRAMS": [132, 264, 528],
    "NUM_WARPS": [
        ((4096, 8), (1024, 4), (0, 2)),
        ((4096, 16), (2048, 8), (0, 4)),
        ((8192, 8), (2048, 4), (0, 2)),
        ((2048, 8), (512, 4), (0, 1)),
    ],
}


@triton.jit
def _silu_and_mul_tile(x_ptr, y_ptr, rows, d, chunks, ROWS: tl.constexpr, BLOCK: tl.constexpr,
                       STEPS: tl.constexpr, FP64: tl.constexpr):
    acc = tl.float64 if FP64 else tl.float32  # a bool, not a dtype: the launcher records constexprs by value
    pid = tl.program_id(0)
    group = pid // chunks
    chunk = pid - group * chunks
    row = group.to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]  # (ROWS, 1)
    gate_row = x_ptr + row * (2 * d)  # (ROWS, 1); the up half starts d further on
    y_row = y_ptr + row * d
    cols = tl.arange(0, BLOCK)[None, :]  # (1, BLOCK)
    for step in tl.static_range(STEPS):
        col = (chunk * STEPS + step) * BLOCK + cols  # (1, BLOCK)
        mask = (row < rows) & (col < d)  # (ROWS, BLOCK)
        gate = tl.load(gate_row + col, mask=mask, other=0.0).to(acc)
        up = tl.load(gate_row + d + col, mask=mask, other=0.0).to(acc)
        # silu(g) = g / (1 + exp(-g)): -inf gives NaN and NaN stays NaN, as torch's silu does.
        y = gate / (1.0 + tl.exp(-gate)) * up
        tl.store(y_row + col, y.to(y_ptr.dtype.element_ty), mask=mask)


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
    groups = triton.cdiv(rows, per_program)
    steps = min(STEPS, triton.next_power_of_2(triton.cdiv(d, block)))
    while steps > 1 and groups * triton.cdiv(d, steps * block) < MIN_PROGRAMS:
        steps = steps // 2
    chunks = triton.cdiv(d, steps * block)
    _silu_and_mul_tile[(groups * chunks,)](x, y, rows, d, chunks, ROWS=per_program, BLOCK=block, STEPS=steps,
                                           FP64=x.dtype == torch.float64, num_warps=_num_warps(per_program * block))
    return y
