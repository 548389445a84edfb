"""cross_entropy for a few rows of a long vocabulary (an eval or decode step's logits): each row is
split into chunks, one program per (row, chunk), so 32 rows of 151936 fill the GPU instead of 32
of its 132 SMs.

Pass 1: each program reduces its chunk to (max, sum of exp(x - max)), per lane online with one exp
per logit, and stores the pair in a workspace (rows, splits) of fp32 (fp64 for fp64 input).
Pass 2: a program per row combines its row's pairs in a fixed order (runs are bitwise
reproducible; no atomics), loads the target's logit by one masked load and writes the loss.
x is read once; the workspace is 8 bytes per chunk.

x: (..., vocab) contiguous, bf16/fp16/fp32/fp64; target: x.shape[:-1] contiguous, int64 or int32;
returns the loss (...,) like x.
"""
import torch
import triton
import triton.language as tl

_FLOATS = ("bfloat16", "float16", "float32", "float64")

DOMAIN = {
    "dtypes": [f"{x},{t}" for x in _FLOATS for t in ("int64", "int32")],
    "contiguous": True,
    "align": 1,
    # Offsets inside a row are int32 (rows are addressed in int64).
    "dims": {"vocab": [1, 2**30]},
}

# Tunables. PROGRAMS: how many pass-1 programs to aim for in all (4 per SM on an H100 as shipped);
# a row is cut into chunks of whole BLOCKs so that rows * chunks reaches it. BLOCK: logits per loop
# step. MAX_SPLITS bounds the chunks per row (pass 2 combines a row's pairs in one tile): 128
# blocks of 1024 cut even one row of 152064 into 128-odd programs.
PROGRAMS = 528
BLOCK = 2048
MAX_SPLITS = 128
NUM_WARPS = 8

# What the catalog provider may change (kforge.gen.providers.catalog): name -> choices.
SEARCH_SPACE = {
    "PROGRAMS": [264, 528, 1056, 2112],
    "BLOCK": [1024, 2048, 4096],
    "NUM_WARPS": [4, 8, 16],
}


# One step of the per-lane running (max m, sum s of exp(x - m)) with one exp per logit, not the
# textbook two (s * exp(m - m') + exp(x - m')): bf16 logits streamed at 3 TB/s need 1.5e12 exps/s
# of an H100's ~3.7e12/s special-function throughput (132 SMs x 16 per clock), two would need 80%.
@triton.jit
def _online_update(m, s, x):
    d = x - m
    # exp(-|d|) is exp(x - m) for a logit under the max, exp(m - x) (the old sum's rescale) for a
    # new max. A -inf logit adds nothing (its d is NaN against a -inf max); a NaN logit makes the
    # sum NaN, so the row's loss is NaN.
    e = tl.where(x == -float("inf"), 0.0, tl.exp(-tl.abs(d)))
    s = tl.where(d > 0, s * e + 1.0, s + e)
    return tl.maximum(m, x), s


@triton.jit
def _chunk_stats(x_ptr, m_ptr, s_ptr, vocab, chunk, splits, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    x_row = x_ptr + row * vocab
    offs = tl.arange(0, BLOCK)
    begin = split * chunk
    end = tl.minimum(begin + chunk, vocab)
    # fp32 for bf16/fp16/fp32 logits, fp64 for fp64: Triton promotes a sum with an fp64 operand to
    # fp64 and any other to fp32. (A dtype as a launch argument would keep kforge's cached launcher
    # from recording the launch.)
    zero = tl.zeros([BLOCK], dtype=tl.float32) + tl.zeros([BLOCK], dtype=x_ptr.dtype.element_ty)
    m = zero - float("inf")  # running max per lane
    s = zero  # per-lane sum of exp(x - m)
    for start in range(begin, end, BLOCK):
        mask = start + offs < end
        x = tl.load(x_row + start + offs, mask=mask, other=-float("inf")).to(zero.dtype)
        m, s = _online_update(m, s, x)
    chunk_max = tl.max(m, axis=0)
    base = tl.where(chunk_max == -float("inf"), 0.0, chunk_max)  # a chunk of -inf: the pair (-inf, 0)
    total = tl.sum(s * tl.exp(m - base), axis=0)  # NaN in the chunk (or a +inf logit) reaches its pair
    tl.store(m_ptr + row * splits + split, chunk_max)
    tl.store(s_ptr + row * splits + split, total)


@triton.jit
def _row_loss(x_ptr, target_ptr, m_ptr, s_ptr, loss_ptr, vocab, splits, ignore_index, SPLITS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    parts = tl.arange(0, SPLITS)
    pmask = parts < splits
    pm = tl.load(m_ptr + row * splits + parts, mask=pmask, other=-float("inf"))
    ps = tl.load(s_ptr + row * splits + parts, mask=pmask, other=0.0)
    row_max = tl.max(pm, axis=0)
    base = tl.where(row_max == -float("inf"), 0.0, row_max)
    total = tl.sum(ps * tl.exp(pm - base), axis=0)
    target = tl.load(target_ptr + row).to(tl.int64)
    inside = (target >= 0) & (target < vocab)
    picked = tl.load(x_ptr + row * vocab + target, mask=inside, other=0.0).to(pm.dtype)  # never outside the row
    # (max - picked) first: exact when the target holds the max, so a small loss keeps its digits.
    loss = (base - picked) + tl.log(total)
    loss = tl.where(inside, loss, float("nan"))
    loss = tl.where(target == ignore_index, 0.0, loss)
    tl.store(loss_ptr + row, loss.to(loss_ptr.dtype.element_ty))


def forward(x, target, ignore_index=-100):
    vocab = x.shape[-1]
    loss = torch.empty(x.shape[:-1], dtype=x.dtype, device=x.device)
    if loss.numel() == 0:
        return loss
    rows = loss.numel()
    block = min(BLOCK, max(triton.next_power_of_2(vocab), 16))
    blocks = triton.cdiv(vocab, block)
    per_row = min(max(triton.cdiv(PROGRAMS, rows), 1), MAX_SPLITS, blocks)
    chunk = triton.cdiv(blocks, per_row) * block  # whole blocks per chunk
    splits = triton.cdiv(vocab, chunk)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    m = torch.empty((rows, splits), dtype=acc, device=x.device)
    s = torch.empty((rows, splits), dtype=acc, device=x.device)
    _chunk_stats[(rows, splits)](x, m, s, vocab, chunk, splits, BLOCK=block, num_warps=NUM_WARPS)
    _row_loss[(rows,)](x, target, m, s, loss, vocab, splits, ignore_index,
                       SPLITS=max(triton.next_power_of_2(splits), 2), num_warps=1)
    return loss
