"""gemv, one program per block of output features for a group of rows of x, looping over all of k.

x: (..., k) contiguous, bf16/fp16/fp32; weight: (n, k) contiguous, of x's dtype; returns
y = x @ weight.T of shape (..., n), accumulated in fp32 and rounded once. Memory-bound at decode:
the weight is read once, in (BLOCK_N, BLOCK_K) tiles whose rows run along k (coalesced), and
each tile serves every row of x that its program holds.

Two paths by the row count m (the product of x's leading dims):
- m < DOT_ROWS: products in fp32 registers into a (ROWS, BLOCK_N, BLOCK_K) accumulator, summed
  over k once after the loop (one tree reduction per output, not one per step);
- m >= DOT_ROWS: tl.dot of (BLOCK_M, BLOCK_K) tiles of x with the weight tile transposed, on
  tensor cores. Half-type operands are upcast and multiplied as TF32, whose 11-bit significand
  holds bf16's 8 and fp16's 11 bits exactly, so every product is exact (and Triton's
  interpreter, whose bf16 dot is wrong, runs the same code); fp32 input multiplies in IEEE fp32.
"""
import torch
import triton
import triton.language as tl

DOMAIN = {
    "dtypes": ["bfloat16,bfloat16", "float16,float16", "float32,float32"],
    "contiguous": True,
    "align": 1,
    # Decode's row counts; k offsets are int32 inside a row (row offsets are int64).
    "dims": {"m": [0, 64]},
}

# Tunables. Register path: BLOCK_N output features per program (more when k is too short to fill
# the tile), with a k block such that the accumulator holds TILE fp32 values (64 per thread at 4
# warps as shipped). tl.dot path from DOT_ROWS rows on, with (BLOCK_M <= 64, DOT_BLOCK_N,
# DOT_BLOCK_K) tiles. Either path halves its block of features while the grid has fewer than
# MIN_PROGRAMS programs (m = 1, n = 4096 in 16-feature blocks is 256 programs, under two per SM
# of an H100's 132), but not below MIN_SLAB weights per program: tiny weights need no full GPU.
BLOCK_N = 16
TILE = 8192
DOT_ROWS = 16
DOT_BLOCK_N = 64
DOT_BLOCK_K = 128
MIN_PROGRAMS = 264
MIN_SLAB = 16384
NUM_WARPS = 4
NUM_STAGES = 3

# What the catalog provider may change (kforge.gen.providers.catalog): name -> choices.
SEARCH_SPACE = {
    "BLOCK_N": [8, 16, 32],
    "TILE": [4096, 8192, 16384],
    "DOT_ROWS": [4, 8, 16],
    "DOT_BLOCK_N": [16, 32, 64],
    "NUM_WARPS": [2, 4, 8],
    "NUM_STAGES": [1, 2, 3],
}


@triton.jit
def _gemv_block(x_ptr, w_ptr, y_ptr, m, n, k, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                DOT: tl.constexpr, PRECISION: tl.constexpr):
    row = tl.program_id(1) * ROWS + tl.arange(0, ROWS)  # (ROWS,) rows of x and y
    col = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) output features
    x_rows = x_ptr + row.to(tl.int64)[:, None] * k  # (ROWS, 1)
    w_rows = w_ptr + col.to(tl.int64)[:, None] * k  # (BLOCK_N, 1): weight rows, contiguous along k
    row_ok = row[:, None] < m
    col_ok = col[:, None] < n
    offs = tl.arange(0, BLOCK_K)[None, :]  # (1, BLOCK_K)
    if DOT:
        acc = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
        for start in range(0, k, BLOCK_K):
            kk = start + offs
            xt = tl.load(x_rows + kk, mask=row_ok & (kk < k), other=0.0).to(tl.float32)  # (ROWS, BLOCK_K)
            wt = tl.load(w_rows + kk, mask=col_ok & (kk < k), other=0.0).to(tl.float32)  # (BLOCK_N, BLOCK_K)
            acc = tl.dot(xt, tl.trans(wt), acc, input_precision=PRECISION)
    else:
        lanes = tl.zeros((ROWS, BLOCK_N, BLOCK_K), dtype=tl.float32)
        for start in range(0, k, BLOCK_K):
            kk = start + offs
            xt = tl.load(x_rows + kk, mask=row_ok & (kk < k), other=0.0).to(tl.float32)
            wt = tl.load(w_rows + kk, mask=col_ok & (kk < k), other=0.0).to(tl.float32)
            lanes += xt[:, None, :] * wt[None, :, :]
        acc = tl.sum(lanes, axis=2)  # (ROWS, BLOCK_N)
    y = y_ptr + row.to(tl.int64)[:, None] * n + col[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=row_ok & (col[None, :] < n))


def forward(x, weight):
    k = x.shape[-1]
    n = weight.shape[0]
    y = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    m = y.numel() // n
    dot = m >= DOT_ROWS
    reach = max(triton.next_power_of_2(k), 16)  # never a block wider than k needs
    if dot:
        rows = min(max(triton.next_power_of_2(m), 16), 64)  # tl.dot takes 16 rows at least
        block_n, least = DOT_BLOCK_N, 16
    else:
        rows = triton.next_power_of_2(m)
        block_k = min(max(TILE // (rows * BLOCK_N), 16), reach)
        block_n, least = max(TILE // (rows * block_k), 1), 4  # wider than BLOCK_N only when k is short
    block_n = min(block_n, max(triton.next_power_of_2(n), least))
    groups = triton.cdiv(m, rows)
    while (block_n > least and groups * triton.cdiv(n, block_n) < MIN_PROGRAMS
           and block_n // 2 * k >= MIN_SLAB):
        block_n = block_n // 2
    # The register path regrows its k block into the tile that halving freed: more bytes in flight.
    block_k = min(DOT_BLOCK_K if dot else max(TILE // (rows * block_n), 16), reach)
    precision = "ieee" if x.dtype == torch.float32 else "tf32"  # TF32 is exact for half inputs only
    _gemv_block[(triton.cdiv(n, block_n), groups)](x, weight, y, m, n, k, ROWS=rows, BLOCK_N=block_n,
                                                  BLOCK_K=block_k, DOT=dot, PRECISION=precision,
                                                  num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return y
