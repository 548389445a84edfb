"""cross_entropy over the last dim, one program per row looping over vocabulary blocks: a running
maximum and a rescaled running sum per lane (online softmax, Milakov & Gimelshein 2018), then the
target's logit by one masked load. fp32 math (fp64 for fp64 input), one rounding.

x: (..., vocab) contiguous, bf16/fp16/fp32/fp64; target: x.shape[:-1] contiguous, int64 or int32;
returns the loss (...,) like x. Reads x once. For a few rows of a long vocabulary (a decode step),
where rows alone cannot fill the GPU, see cross_entropy_split.py.
"""
import torch
import triton
import triton.language as tl

_FLOATS = ("bfloat16", "float16", "float32", "float64")

DOMAIN = {
    "dtypes": [f"{x},{t}" for x in _FLOATS for t in ("int64", "int32")],
    "contiguous": True,
    "align": 1,
    # Offsets inside a row are int32 (rows are addressed in int64); the last block's
    # `start + offs` must not wrap.
    "dims": {"vocab": [1, 2**30]},
}

# Tunables. BLOCK: logits per loop step (the vocabulary rounded up to a power of two when it is
# shorter). As shipped, 4096 fp32 values over 8 warps is 16 per thread, enough loads in flight to
# stream at full bandwidth without spilling. NUM_STAGES: loop steps whose loads Triton's software
# pipeliner keeps in flight (3, its default on CUDA, as shipped).
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
def _cross_entropy_row(x_ptr, target_ptr, loss_ptr, vocab, ignore_index, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * vocab
    offs = tl.arange(0, BLOCK)
    # fp32 for bf16/fp16/fp32 logits, fp64 for fp64: Triton promotes a sum with an fp64 operand to
    # fp64 and any other to fp32. (A dtype as a launch argument would keep kforge's cached launcher
    # from recording the launch.)
    zero = tl.zeros([BLOCK], dtype=tl.float32) + tl.zeros([BLOCK], dtype=x_ptr.dtype.element_ty)
    m = zero - float("inf")  # running max per lane
    s = zero  # per-lane sum of exp(x - m)
    for start in range(0, vocab, BLOCK):
        mask = start + offs < vocab
        x = tl.load(x_row + start + offs, mask=mask, other=-float("inf")).to(zero.dtype)
        m, s = _online_update(m, s, x)
    row_max = tl.max(m, axis=0)
    # Lanes that saw only -inf have s = 0; a row of -inf keeps base 0 (its loss comes out NaN, as
    # the reference's). A +inf logit gives exp(inf - inf) = NaN: the row is NaN, as log_softmax's.
    base = tl.where(row_max == -float("inf"), 0.0, row_max)
    total = tl.sum(s * tl.exp(m - base), axis=0)
    target = tl.load(target_ptr + row).to(tl.int64)
    inside = (target >= 0) & (target < vocab)
    picked = tl.load(x_row + target, mask=inside, other=0.0).to(zero.dtype)  # never read outside the row
    # (max - picked) first: exact when the target holds the max, so a small loss keeps its digits
    # (logsumexp - picked would cancel ~log(vocab) down to it).
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
    block = min(max(triton.next_power_of_2(vocab), MIN_BLOCK), MAX_BLOCK)
    _cross_entropy_row[(rows,)](x, target, loss, vocab, ignore_index, BLOCK=block, num_warps=NUM_WARPS,
                                num_stages=NUM_STAGES)
    return loss
