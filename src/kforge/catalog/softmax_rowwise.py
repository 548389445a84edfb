"""softmax over the last dim, one program per row: the whole row in registers, fp32 math.

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

# Tunables. BLOCK is the row length rounded up to a power of two (a tl.arange must be one);
# warps grow with the row so each thread holds at most ~64 fp32 values (Liger/Unsloth's rule).
MIN_BLOCK = 16
NUM_WARPS = ((32768, 32), (8192, 16), (2048, 8), (0, 4))  # (BLOCK at least, num_warps)


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


def _num_warps(block):
    for at_least, warps in NUM_WARPS:
        if block >= at_least:
            return warps
    return 4


def forward(x):
    cols = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    rows = x.numel() // cols
    block = max(triton.next_power_of_2(cols), MIN_BLOCK)
    _softmax_row[(rows,)](x, y, cols, BLOCK=block, num_warps=_num_warps(block))
    return y
