"""fused_moe as two grouped GEMMs over the (token, slot) pairs sorted by expert, vLLM's fused_moe
layout: the pairs of each expert padded to whole blocks of BLOCK_M rows, one program per (block,
column tile), the block's expert read from a per-block table; padding blocks exit at once.
The routing (count the pairs per expert, place them, pad) is two small kernels of one program per
expert, so nothing is read back to the host (a decode step stays capturable in a CUDA graph) and
the block count is bounded from the shapes alone.

Pass 1: rows of x against the expert's gate and up rows, both accumulated in fp32 in the same
program, silu(g) * u written as the intermediate at x's dtype, (tokens * k, inter). Pass 2: the
intermediate against the expert's down rows, times the slot's routing weight, fp32 per slot; the
k slots of a token are then summed in slot order (fixed: bitwise reproducible, no atomics) and
rounded once.

x: (tokens, hidden), gate_up: (experts, 2 * inter, hidden), down: (experts, hidden, inter), all
contiguous, bf16/fp16/fp32 (fp32 as IEEE products); topk_weights fp32 or x's dtype; topk_ids
int32/int64. Regimes: at most DECODE_ROWS pairs per expert on average is decode (small BLOCK_M,
wide K steps: the weights stream once), more is prefill (square tiles, tensor-core bound).
"""

import torch
import triton
import triton.language as tl

DOMAIN = {
    # (x, gate_up, down, topk_weights, topk_ids): the weights fp32 or x's dtype, the ids int32 or int64.
    "dtypes": [
        "bfloat16,bfloat16,bfloat16,bfloat16,int32", "bfloat16,bfloat16,bfloat16,bfloat16,int64",
        "bfloat16,bfloat16,bfloat16,float32,int32", "bfloat16,bfloat16,bfloat16,float32,int64",
        "float16,float16,float16,float16,int32", "float16,float16,float16,float16,int64",
        "float16,float16,float16,float32,int32", "float16,float16,float16,float32,int64",
        "float32,float32,float32,float32,int32", "float32,float32,float32,float32,int64",
    ],
    "contiguous": True,
    "align": 1,
    "dims": {},
}

# Tunables (per regime: rows per block, output columns per program, the reduction step, warps, stages).
DECODE_ROWS = 16  # pairs per expert, on average, up to which the decode tiles are used
DECODE_BLOCK_M = 16
DECODE_BLOCK_N = 64
DECODE_BLOCK_K = 128
DECODE_WARPS = 4
PREFILL_BLOCK_M = 64
PREFILL_BLOCK_N = 128
PREFILL_BLOCK_K = 64
PREFILL_WARPS = 8
STAGES = 3

SEARCH_SPACE = {
    "DECODE_ROWS": [4, 16, 64],
    "DECODE_BLOCK_N": [32, 64, 128],
    "DECODE_BLOCK_K": [64, 128, 256],
    "DECODE_WARPS": [2, 4, 8],
    "PREFILL_BLOCK_M": [32, 64, 128],
    "PREFILL_BLOCK_N": [64, 128, 256],
    "PREFILL_BLOCK_K": [32, 64],
    "PREFILL_WARPS": [4, 8],
    "STAGES": [2, 3, 4],
}



@triton.jit
def _gate_up(x_ptr, w_ptr, a_ptr, slots_ptr, experts_ptr, n_slots, hidden, inter, top_k,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr,
             IEEE: tl.constexpr):
    block = tl.program_id(0)
    expert = tl.load(experts_ptr + block)
    if expert >= 0:
        slot = tl.load(slots_ptr + block * BLOCK_M + tl.arange(0, BLOCK_M))  # (BLOCK_M,); n_slots marks padding
        valid = slot < n_slots
        token = (slot // top_k).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) intermediate columns
        col_ok = cols < inter
        w = w_ptr + expert.to(tl.int64) * (2 * inter) * hidden  # gate_up[expert]: (2 * inter, hidden)
        gate_rows = w + cols.to(tl.int64)[None, :] * hidden  # (1, BLOCK_N)
        up_rows = gate_rows + inter * hidden
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, hidden, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            k_ok = kk < hidden
            xa = tl.load(x_ptr + token[:, None] * hidden + kk[None, :], mask=valid[:, None] & k_ok[None, :], other=0.0)
            wmask = k_ok[:, None] & col_ok[None, :]
            wg = tl.load(gate_rows + kk[:, None], mask=wmask, other=0.0)  # (BLOCK_K, BLOCK_N)
            wu = tl.load(up_rows + kk[:, None], mask=wmask, other=0.0)
            if UPCAST:
                xa, wg, wu = xa.to(tl.float32), wg.to(tl.float32), wu.to(tl.float32)
            if IEEE:
                acc_g += tl.dot(xa, wg, input_precision="ieee")
                acc_u += tl.dot(xa, wu, input_precision="ieee")
            else:
                acc_g += tl.dot(xa, wg)
                acc_u += tl.dot(xa, wu)
        act = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u  # silu(g) * u
        out = a_ptr + slot.to(tl.int64)[:, None] * inter + cols[None, :]
        tl.store(out, act.to(a_ptr.dtype.element_ty), mask=valid[:, None] & col_ok[None, :])


@triton.jit
def _down(a_ptr, w_ptr, weights_ptr, out_ptr, slots_ptr, experts_ptr, n_slots, hidden, inter,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr,
          IEEE: tl.constexpr):
    block = tl.program_id(0)
    expert = tl.load(experts_ptr + block)
    if expert >= 0:
        slot = tl.load(slots_ptr + block * BLOCK_M + tl.arange(0, BLOCK_M))
        valid = slot < n_slots
        rows = slot.to(tl.int64)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) hidden columns
        col_ok = cols < hidden
        down_rows = w_ptr + expert.to(tl.int64) * hidden * inter + cols.to(tl.int64)[None, :] * inter  # down[expert]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, inter, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            k_ok = kk < inter
            aa = tl.load(a_ptr + rows[:, None] * inter + kk[None, :], mask=valid[:, None] & k_ok[None, :], other=0.0)
            wd = tl.load(down_rows + kk[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)  # (BLOCK_K, BLOCK_N)
            if UPCAST:
                aa, wd = aa.to(tl.float32), wd.to(tl.float32)
            if IEEE:
                acc += tl.dot(aa, wd, input_precision="ieee")
            else:
                acc += tl.dot(aa, wd)
        weight = tl.load(weights_ptr + rows, mask=valid, other=0.0).to(tl.float32)  # (BLOCK_M,)
        out = out_ptr + rows[:, None] * hidden + cols[None, :]
        tl.store(out, acc * weight[:, None], mask=valid[:, None] & col_ok[None, :])


@triton.jit
def _count(ids_ptr, counts_ptr, n_slots, BLOCK: tl.constexpr):
    expert = tl.program_id(0)
    total = tl.zeros((BLOCK,), dtype=tl.int32)
    for start in range(0, n_slots, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        ids = tl.load(ids_ptr + idx, mask=idx < n_slots, other=-1)
        total += (ids == expert).to(tl.int32)
    tl.store(counts_ptr + expert, tl.sum(total, 0))


@triton.jit
def _place(ids_ptr, counts_ptr, slots_ptr, experts_ptr, n_slots, experts, n_blocks, BLOCK_M: tl.constexpr,
           BLOCK: tl.constexpr, EXPERTS: tl.constexpr):
    # Expert e's pairs go to slots[start_e:], in slot order, then padding up to whole blocks; the
    # blocks it covers name it. Program 0 also marks the blocks past the last expert's as empty.
    expert = tl.program_id(0)
    every = tl.arange(0, EXPERTS)
    counts = tl.load(counts_ptr + every, mask=every < experts, other=0)  # (EXPERTS,)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    start = tl.sum(tl.where(every < expert, padded, 0), 0)
    count = tl.sum(tl.where(every == expert, counts, 0), 0)
    mine = tl.sum(tl.where(every == expert, padded, 0), 0)
    placed = 0
    for chunk in range(0, n_slots, BLOCK):
        idx = chunk + tl.arange(0, BLOCK)
        hit = tl.load(ids_ptr + idx, mask=idx < n_slots, other=-1) == expert
        rank = tl.cumsum(hit.to(tl.int32), 0) - 1 + placed  # (BLOCK,)
        tl.store(slots_ptr + start + rank, idx, mask=hit)
        placed += tl.sum(hit.to(tl.int32), 0)
    pad = count + tl.arange(0, BLOCK_M)
    tl.store(slots_ptr + start + pad, tl.zeros((BLOCK_M,), dtype=tl.int32) + n_slots, mask=pad < mine)
    for b in range(0, mine // BLOCK_M, BLOCK):
        blocks = b + tl.arange(0, BLOCK)
        tl.store(experts_ptr + start // BLOCK_M + blocks, tl.zeros((BLOCK,), dtype=tl.int32) + expert,
                 mask=blocks < mine // BLOCK_M)
    if expert == 0:
        used = tl.sum(padded, 0)
        for b in range(used // BLOCK_M, n_blocks, BLOCK):
            blocks = b + tl.arange(0, BLOCK)
            tl.store(experts_ptr + blocks, tl.zeros((BLOCK,), dtype=tl.int32) - 1, mask=blocks < n_blocks)
        for i in range(used, n_blocks * BLOCK_M, BLOCK):
            rows = i + tl.arange(0, BLOCK)
            tl.store(slots_ptr + rows, tl.zeros((BLOCK,), dtype=tl.int32) + n_slots, mask=rows < n_blocks * BLOCK_M)


@triton.jit
def _combine(per_slot_ptr, y_ptr, hidden, top_k, BLOCK: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < hidden
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for j in range(0, top_k):  # the token's slots in order: the same sum every run
        acc += tl.load(per_slot_ptr + (token * top_k + j) * hidden + cols, mask=mask, other=0.0)
    tl.store(y_ptr + token * hidden + cols, acc.to(y_ptr.dtype.element_ty), mask=mask)


ROUTE_BLOCK = 1024  # ids per step of the counting and placing scans
COMBINE_BLOCK = 1024


def forward(x, gate_up, down, topk_weights, topk_ids):
    tokens, hidden = x.shape
    experts, inter, top_k = gate_up.shape[0], down.shape[2], topk_ids.shape[1]
    n_slots = tokens * top_k
    y = torch.empty((tokens, hidden), dtype=x.dtype, device=x.device)
    if n_slots == 0 or hidden == 0:
        return y
    if n_slots <= DECODE_ROWS * experts:
        block_m, block_n, block_k, warps = DECODE_BLOCK_M, DECODE_BLOCK_N, DECODE_BLOCK_K, DECODE_WARPS
    else:
        block_m, block_n, block_k, warps = PREFILL_BLOCK_M, PREFILL_BLOCK_N, PREFILL_BLOCK_K, PREFILL_WARPS
    ids = topk_ids.reshape(-1)  # (n_slots,)
    # Each expert wastes at most one partial block: the bound needs no count read back (no sync).
    n_blocks = triton.cdiv(n_slots, block_m) + min(experts, n_slots)
    counts = torch.empty((experts,), dtype=torch.int32, device=x.device)
    slots = torch.empty((n_blocks * block_m,), dtype=torch.int32, device=x.device)
    block_expert = torch.empty((n_blocks,), dtype=torch.int32, device=x.device)
    _count[(experts,)](ids, counts, n_slots, BLOCK=ROUTE_BLOCK)
    _place[(experts,)](ids, counts, slots, block_expert, n_slots, experts, n_blocks, BLOCK_M=block_m,
                       BLOCK=ROUTE_BLOCK, EXPERTS=triton.next_power_of_2(experts))
    ieee = x.dtype == torch.float32
    # Triton's interpreter (the only way CPU tensors reach a Triton kernel) multiplies bf16 tiles
    # wrongly: there they are multiplied as fp32, which gives the GPU's results (bf16 and fp16
    # products are exact in fp32 either way).
    upcast = x.device.type == "cpu"
    act = torch.empty((n_slots, inter), dtype=x.dtype, device=x.device)
    _gate_up[(n_blocks, triton.cdiv(inter, block_n))](
        x, gate_up, act, slots, block_expert, n_slots, hidden, inter, top_k, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_K=block_k, UPCAST=upcast, IEEE=ieee, num_warps=warps, num_stages=STAGES)
    per_slot = torch.empty((n_slots, hidden), dtype=torch.float32, device=x.device)
    _down[(n_blocks, triton.cdiv(hidden, block_n))](
        act, down, topk_weights.reshape(-1), per_slot, slots, block_expert, n_slots, hidden, inter, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_K=block_k, UPCAST=upcast, IEEE=ieee, num_warps=warps, num_stages=STAGES)
    _combine[(tokens, triton.cdiv(hidden, COMBINE_BLOCK))](per_slot, y, hidden, top_k, BLOCK=COMBINE_BLOCK)
    return y
