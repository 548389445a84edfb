"""softmax over the last dim for long rows (vocabularies): one program per row, looping over
column blocks. Pass 1 keeps a running maximum and a rescaled running sum per lane (online
softmax, Milakov & Gimelshein 2018); pass 2 re-reads the row and writes exp(x - max) / sum.

x: (..., cols) contiguous, bf16/fp16/fp32; returns y like x. Reads x twice and writes y once, so
for rows that fit in registers softmax_rowwise.py moves a third less memory.
"""
import torch
import triton
import triton.language as tl

DOMAIN = {
    "dtypes": ["bfloat16", "float16", "float32"],
    "contiguous": True,
    "align": 1,
    # Column offsets are int32 inside a row (rows themselves are addressed in int64), and the
    # last block's `start + offs` must not wrap.
    "dims": {"cols": [1, 2**30]},
}

# Tunables. BLOCK: columns per loop step (the row length rounded up to a power of two when the
# row is shorter). As shipped, 4096 fp32 values over 8 warps is 16 per thread, enough loads in
# flight to stream at full bandwidth without spilling. NUM_STAGES: how many loop steps' loads
# Triton's software pipeliner keeps in flight (3, its default on CUDA, as shipped).
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
def _softmax_online_row(x_ptr, y_ptr, cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * cols
    y_row = y_ptr + row * cols
    offs = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], -float("inf"), tl.float32)  # running max per lane
    s = tl.zeros([BLOCK], dtype=tl.float32)  # per-lane sum of exp(x - m)
    for start in range(0, cols, BLOCK):
        mask = start + offs < cols
        x = tl.load(x_row + start + offs, mask=mask, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        # Lanes that have seen only -inf keep s = 0 (exp(-inf - -inf) would be NaN).
        base = tl.where(m_new == -float("inf"), 0.0, m_new)
        s = s * tl.exp(m - base) + tl.exp(x - base)
        m = m_new
    row_max = tl.max(m, axis=0)
    base = tl.where(row_max == -float("inf"), 0.0, row_max)
    total = tl.sum(s * tl.exp(m - base), axis=0)  # NaN anywhere in the row reaches every output
    for start in range(0, cols, BLOCK):
        mask = start + offs < cols
        x = tl.load(x_row + start + offs, mask=mask, other=-float("inf")).to(tl.float32)
        y = tl.exp(x - base) / total
        tl.store(y_row + start + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def forward(x):
    cols = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    rows = x.numel() // cols
    block = min(max(triton.next_power_of_2(cols), MIN_BLOCK), MAX_BLOCK)
    _softmax_online_row[(rows,)](x, y, cols, BLOCK=block, num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return y
