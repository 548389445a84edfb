"""gemv split along k for weights with few output features and a long reduction (Llama 3 8B's
down projection: n = 4096, k = 14336): one program per (block of output features, chunk of k,
group of rows), so that the grid fills the GPU where blocks of output features alone would not
(4096 features in 64-wide blocks are 64 programs for 132 SMs).

Pass 1: each program reduces its (BLOCK_N, chunk) slab of the weight against its rows of x into
fp32 partial sums, stored in a workspace (splits, m, n). Pass 2: each output sums its partials in
split order (fixed, so runs are bitwise reproducible; no atomics) and is rounded once. When one
chunk covers k, pass 1 writes y itself. The workspace adds 8 * splits * m * n bytes of traffic
(written, then read), against 2 * n * k bytes of bf16 weight: 1.6% at m = 1, k = 4096 and 16
splits, but as much as the weight at m = 64; splits are capped so that it stays under a
WORKSPACE_SHARE-th of the weight's bytes.

x: (..., k) contiguous, bf16/fp16/fp32; weight: (n, k) contiguous, of x's dtype; returns
y = x @ weight.T of shape (..., n). Inside a slab, the two paths of gemv_rowblock: fp32 products
in registers for m < DOT_ROWS, tl.dot (half types as exact TF32 products, fp32 as IEEE) from there.
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

# Tunables. PROGRAMS: how many pass-1 programs to aim for (4 per SM on an H100 as shipped); k is cut
# into chunks of whole k blocks, at most MAX_SPLITS of them (and few enough for WORKSPACE_SHARE),
# until the grid reaches it. Register path: BLOCK_N output features per program (more when k is
# too short to fill the tile), with a k block such that the accumulator holds TILE fp32 values.
# tl.dot path from DOT_ROWS rows on, with (BLOCK_M <= 64, DOT_BLOCK_N, DOT_BLOCK_K) tiles.
# COMBINE_BLOCK: outputs per pass-2 program.
PROGRAMS = 528
MAX_SPLITS = 16
WORKSPACE_SHARE = 8
BLOCK_N = 32
TILE = 8192
DOT_ROWS = 16
DOT_BLOCK_N = 64
DOT_BLOCK_K = 128
COMBINE_BLOCK = 1024
NUM_WARPS = 4
NUM_STAGES = 3

# What the catalog provider may change (kforge.gen.providers.catalog): name -> choices.
SEARCH_SPACE = {
    "PROGRAMS": [264, 528, 1056],
    "MAX_SPLITS": [8, 16, 32],
    "BLOCK_N": [16, 32, 64],
    "TILE": [4096, 8192, 16384],
    "DOT_ROWS": [4, 8, 16],
    "NUM_WARPS": [2, 4, 8],
    "NUM_STAGES": [1, 2, 3],
}


@triton.jit
def _gemv_slab(x_ptr, w_ptr, out_ptr, m, n, k, chunk, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr, DOT: tl.constexpr, PRECISION: tl.constexpr):
    split = tl.program_id(1)
    row = tl.program_id(2) * ROWS + tl.arange(0, ROWS)  # (ROWS,) rows of x and y
    col = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) output features
    x_rows = x_ptr + row.to(tl.int64)[:, None] * k  # (ROWS, 1)
    w_rows = w_ptr + col.to(tl.int64)[:, None] * k  # (BLOCK_N, 1): weight rows, contiguous along k
    row_ok = row[:, None] < m
    col_ok = col[:, None] < n
    offs = tl.arange(0, BLOCK_K)[None, :]  # (1, BLOCK_K)
    begin = split * chunk
    end = tl.minimum(begin + chunk, k)
    if DOT:
        acc = tl.zeros((ROWS, BLOCK_N), dtype=tl.float32)
        for start in range(begin, end, BLOCK_K):
            kk = start + offs
            xt = tl.load(x_rows + kk, mask=row_ok & (kk < end), other=0.0).to(tl.float32)  # (ROWS, BLOCK_K)
            wt = tl.load(w_rows + kk, mask=col_ok & (kk < end), other=0.0).to(tl.float32)  # (BLOCK_N, BLOCK_K)
            acc = tl.dot(xt, tl.trans(wt), acc, input_precision=PRECISION)
    else:
        lanes = tl.zeros((ROWS, BLOCK_N, BLOCK_K), dtype=tl.float32)
        for start in range(begin, end, BLOCK_K):
            kk = start + offs
            xt = tl.load(x_rows + kk, mask=row_ok & (kk < end), other=0.0).to(tl.float32)
            wt = tl.load(w_rows + kk, mask=col_ok & (kk < end), other=0.0).to(tl.float32)
            lanes += xt[:, None, :] * wt[None, :, :]
        acc = tl.sum(lanes, axis=2)  # (ROWS, BLOCK_N)
    # out is the workspace (splits, m, n) in fp32, or y itself when there is one split.
    out = out_ptr + (split * m + row.to(tl.int64))[:, None] * n + col[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok & (col[None, :] < n))


@triton.jit
def _gemv_combine(part_ptr, y_ptr, outputs, splits, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < outputs
    part = part_ptr + offs
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for _ in range(0, splits):  # split order: the same sum on every run
        acc += tl.load(part, mask=mask, other=0.0)
        part += outputs
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


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
        block_n, block_k, least = DOT_BLOCK_N, min(DOT_BLOCK_K, reach), 16
    else:
        rows = triton.next_power_of_2(m)
        block_k = min(max(TILE // (rows * BLOCK_N), 16), reach)
        block_n, least = max(TILE // (rows * block_k), 1), 4  # wider than BLOCK_N only when k is short
    block_n = min(block_n, max(triton.next_power_of_2(n), least))
    blocks = triton.cdiv(n, block_n) * triton.cdiv(m, rows)
    k_blocks = max(triton.cdiv(k, block_k), 1)
    # 8 bytes per output and split against the weight's element_size * k per output.
    affordable = max(k * weight.element_size() // (8 * WORKSPACE_SHARE * m), 1)
    splits = min(max(triton.cdiv(PROGRAMS, blocks), 1), MAX_SPLITS, affordable, k_blocks)
    chunk = triton.cdiv(k_blocks, splits) * block_k  # whole blocks per chunk
    splits = max(triton.cdiv(k, chunk), 1)  # k = 0: one split of nothing, which writes zeros
    out = y if splits == 1 else torch.empty((splits, m, n), dtype=torch.float32, device=x.device)
    precision = "ieee" if x.dtype == torch.float32 else "tf32"  # TF32 is exact for half inputs only
    _gemv_slab[(triton.cdiv(n, block_n), splits, triton.cdiv(m, rows))](
        x, weight, out, m, n, k, chunk, ROWS=rows, BLOCK_N=block_n, BLOCK_K=block_k, DOT=dot,
        PRECISION=precision, num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    if splits > 1:
        _gemv_combine[(triton.cdiv(m * n, COMBINE_BLOCK),)](out, y, m * n, splits, BLOCK=COMBINE_BLOCK,
                                                           num_warps=4)
    return y
