"""softmax over the last dim for a few very long rows (a decode step's vocabulary logits): each row
is split into chunks, one program per (row, chunk), so 32 rows of 151936 fill the GPU instead of
32 of its 132 SMs.

Pass 1: each program reduces its chunk to (max, sum of exp(x - max)) and stores the pair in an
fp32 workspace (rows, splits). Pass 2: each program combines its row's pairs (in a fixed order, so
runs are bitwise reproducible), re-reads its chunk (from L2 when the input fits there) and writes
exp(x - max) / sum. One read from memory, one from L2, one write.

x: (..., cols) contiguous, bf16/fp16/fp32; returns y like x.
"""
import torch
import triton
import triton.language as tl

DOMAIN = {
    "dtypes": ["bfloat16", "float16", "float32"],
    "contiguous": True,
    "align": 1,
    # Column offsets are int32 inside a row; MAX_SPLITS partial pairs per row are combined at once.
    "dims": {"cols": [1, 2**30]},
}

# Tunables. PROGRAMS: how many programs to aim for in all (4 per SM on an H100 as shipped); a row
# is cut into chunks of whole BLOCKs so that rows * chunks reaches it. BLOCK: columns per loop step.
# MAX_SPLITS bounds the chunks per row (their pairs are combined in one tile in pass 2).
PROGRAMS = 528
BLOCK = 2048
MAX_SPLITS = 64
NUM_WARPS = 8

# What the catalog provider may change (kforge.gen.providers.catalog): name -> choices.
SEARCH_SPACE = {
    "PROGRAMS": [264, 528, 1056, 2112],
    "BLOCK": [1024, 2048, 4096],
    "NUM_WARPS": [4, 8, 16],
}


@triton.jit
def _chunk_stats(x_ptr, m_ptr, s_ptr, cols, chunk, splits, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    x_row = x_ptr + row * cols
    offs = tl.arange(0, BLOCK)
    begin = split * chunk
    end = tl.minimum(begin + chunk, cols)
    m = tl.full([BLOCK], -float("inf"), tl.float32)  # running max per lane
    s = tl.zeros([BLOCK], dtype=tl.float32)  # per-lane sum of exp(x - m)
    for start in range(begin, end, BLOCK):
        mask = start + offs < end
        x = tl.load(x_row + start + offs, mask=mask, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        base = tl.where(m_new == -float("inf"), 0.0, m_new)  # lanes that saw only -inf keep s = 0
        s = s * tl.exp(m - base) + tl.exp(x - base)
        m = m_new
    chunk_max = tl.max(m, axis=0)
    base = tl.where(chunk_max == -float("inf"), 0.0, chunk_max)
    total = tl.sum(s * tl.exp(m - base), axis=0)  # NaN in the chunk reaches its pair
    tl.store(m_ptr + row * splits + split, chunk_max)
    tl.store(s_ptr + row * splits + split, total)


@triton.jit
def _chunk_write(x_ptr, y_ptr, m_ptr, s_ptr, cols, chunk, splits, BLOCK: tl.constexpr, SPLITS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    parts = tl.arange(0, SPLITS)
    pmask = parts < splits
    pm = tl.load(m_ptr + row * splits + parts, mask=pmask, other=-float("inf"))
    ps = tl.load(s_ptr + row * splits + parts, mask=pmask, other=0.0)
    row_max = tl.max(pm, axis=0)
    base = tl.where(row_max == -float("inf"), 0.0, row_max)
    total = tl.sum(ps * tl.exp(pm - base), axis=0)
    inv = 1.0 / total
    x_row = x_ptr + row * cols
    y_row = y_ptr + row * cols
    offs = tl.arange(0, BLOCK)
    begin = split * chunk
    end = tl.minimum(begin + chunk, cols)
    for start in range(begin, end, BLOCK):
        mask = start + offs < end
        x = tl.load(x_row + start + offs, mask=mask, other=-float("inf")).to(tl.float32)
        y = tl.exp(x - base) * inv
        tl.store(y_row + start + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def forward(x):
    cols = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    rows = x.numel() // cols
    block = min(BLOCK, max(triton.next_power_of_2(cols), 16))
    blocks = triton.cdiv(cols, block)
    per_row = min(max(triton.cdiv(PROGRAMS, rows), 1), MAX_SPLITS, blocks)
    chunk = triton.cdiv(blocks, per_row) * block  # whole blocks per chunk
    splits = triton.cdiv(cols, chunk)
    m = torch.empty((rows, splits), dtype=torch.float32, device=x.device)
    s = torch.empty((rows, splits), dtype=torch.float32, device=x.device)
    _chunk_stats[(rows, splits)](x, m, s, cols, chunk, splits, BLOCK=block, num_warps=NUM_WARPS)
    _chunk_write[(rows, splits)](x, y, m, s, cols, chunk, splits, BLOCK=block,
                                 SPLITS=max(triton.next_power_of_2(splits), 2), num_warps=NUM_WARPS)
    return y
