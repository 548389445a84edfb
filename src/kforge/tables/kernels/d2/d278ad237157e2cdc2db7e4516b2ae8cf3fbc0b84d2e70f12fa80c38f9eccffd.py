"""topk_softmax (the MoE router), rows in registers: ROWS tokens per program as a (ROWS, BLOCK_E)
tile, an fp32 softmax, then K rounds of (largest weight, lowest index holding it, mask it out).

x: (..., experts) contiguous, bf16/fp16/fp32; returns weights (..., k) float32 and indices
(..., k) int32 in descending weight order, the weights divided by their sum when renormalize.
Reads x once and writes 8 bytes per pick: the eager composition (softmax, topk, the division,
the int32 cast) is four to five launches and about 1% of the copy ceiling on an H100.
"""
import torch
import triton
import triton.language as tl

DOMAIN = {
    "dtypes": ["bfloat16", "float16", "float32"],
    "contiguous": True,
    "align": 1,
    # Routers have 8 to 512 experts (Qwen3-Next: 512, top-10). The K rounds are unrolled: a k of
    # hundreds would compile for minutes, and is no router.
    "dims": {"experts": [1, 4096], "k": [1, 32]},
}

# Tunables. BLOCK_E is the expert count rounded up to a power of two (a tl.arange must be one).
# A program holds at least MIN_TILE logits, MIN_TILE // BLOCK_E tokens of them (never more tokens
# than the call has, rounded up to a power of two): a program per token of 64 experts would be all
# launch and reduction overhead. Warps grow with the tile so a thread holds about 8 logits, and a
# row of up to 256 bf16 experts (32 lanes x 16 bytes) sits in one warp: its reductions are shuffles.
MIN_BLOCK = 16
MIN_TILE = 1024  # logits per program, at least (a power of two)
NUM_WARPS = ((8192, 16), (4096, 8), (1024, 4), (512, 2), (0, 1))  # (tile elements at least, num_warps)

# What the catalog provider may change (kforge.gen.providers.catalog): name -> choices.
SEARCH_SPACE = {
    "MIN_TILE": [256, 512, 1024, 2048, 4096],
    "NUM_WARPS": [
        ((8192, 16), (4096, 8), (1024, 4), (512, 2), (0, 1)),
        ((8192, 8), (2048, 4), (0, 2)),
        ((4096, 16), (2048, 8), (512, 4), (0, 2)),
        ((16384, 16), (8192, 8), (2048, 4), (1024, 2), (0, 1)),
    ],
}


@triton.jit
def _topk_softmax_rows(x_ptr, w_ptr, i_ptr, tokens, experts, K: tl.constexpr, RENORMALIZE: tl.constexpr,
                       ROWS: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]  # (ROWS, 1)
    cols = tl.arange(0, BLOCK_E)[None, :]  # (1, BLOCK_E)
    picks = tl.arange(0, BLOCK_K)[None, :]  # (1, BLOCK_K)
    # Rows past the end re-read the last row (and are not stored): masking them to -inf would
    # compute exp(-inf - -inf) = NaN in lanes nobody reads.
    src = tl.minimum(row, tokens - 1) * experts + cols
    x = tl.load(x_ptr + src, mask=cols < experts, other=-float("inf")).to(tl.float32)  # (ROWS, BLOCK_E)
    e = tl.exp(x - tl.max(x, axis=1, keep_dims=True))
    # NaN when the row holds a NaN or +inf, or is all -inf: the reference's softmax is NaN there.
    total = tl.sum(e, axis=1, keep_dims=True)  # (ROWS, 1)
    p = e / total
    # Keys to pick from: NaN rows pick their lowest indices (all keys 0); padding and picked
    # lanes sit at -1, below every softmax value, so k <= experts never picks one.
    key = tl.where(cols < experts, tl.where(p == p, p, 0.0), -1.0)
    weights = tl.zeros((ROWS, BLOCK_K), dtype=tl.float32)
    indices = tl.zeros((ROWS, BLOCK_K), dtype=tl.int32)
    for j in tl.static_range(K):
        best, at = tl.max(key, axis=1, return_indices=True, return_indices_tie_break_left=True)  # (ROWS,)
        weights = tl.where(picks == j, best[:, None], weights)
        indices = tl.where(picks == j, at[:, None].to(tl.int32), indices)
        key = tl.where(cols == at[:, None], -1.0, key)
    weights = tl.where(total == total, weights, float("nan"))
    if RENORMALIZE:
        # Unpicked columns hold 0 and add nothing; the top weight is >= 1/experts, so no 0 / 0.
        weights = weights / tl.sum(weights, axis=1, keep_dims=True)
    dst = row * K + picks  # (ROWS, BLOCK_K)
    mask = (row < tokens) & (picks < K)
    tl.store(w_ptr + dst, weights, mask=mask)
    tl.store(i_ptr + dst, indices, mask=mask)


def _num_warps(tile):
    for at_least, warps in NUM_WARPS:
        if tile >= at_least:
            return warps
    return 4


def forward(x, k, renormalize=False):
    experts = x.shape[-1]
    weights = torch.empty((*x.shape[:-1], k), dtype=torch.float32, device=x.device)  # (..., k)
    indices = torch.empty((*x.shape[:-1], k), dtype=torch.int32, device=x.device)  # (..., k)
    if weights.numel() == 0:
        return weights, indices
    tokens = x.numel() // experts
    block_e = max(triton.next_power_of_2(experts), MIN_BLOCK)
    rows = min(max(MIN_TILE // block_e, 1), triton.next_power_of_2(tokens))
    _topk_softmax_rows[(triton.cdiv(tokens, rows),)](
        x, weights, indices, tokens, experts, K=k, RENORMALIZE=renormalize, ROWS=rows, BLOCK_E=block_e,
        BLOCK_K=max(triton.next_power_of_2(k), 2), num_warps=_num_warps(rows * block_e))
    return weights, indices
