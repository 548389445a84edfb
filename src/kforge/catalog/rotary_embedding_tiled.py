"""rotary_embedding, one program per tile of (BLOCK_T tokens, BLOCK_H heads) of query or key, both
in one launch: a token's cos/sin row is read once per tile and shared by its heads; fp32 math,
one rounding.

query (tokens, heads, head_size) and key (tokens, kv_heads, head_size) contiguous, bf16/fp16/fp32;
positions (tokens,) int64; cos_sin_cache (max_position, rot_dim) contiguous, fp32 or the query's
dtype. Returns new (query, key). Memory-bound: each head row is read and written once. Neox pairs
are the two halves of the rotated dims, loaded as two contiguous runs; interleaved (GPT-J) pairs
are loaded as one contiguous run and split into even and odd lanes in registers (reshape + split,
then join on the way out), so neither layout makes strided accesses. The dims past rot_dim of a
partial rotary head are copied as they are, bit for bit. The grid is 1-D, the head blocks of a
token block adjacent (query's, then key's), so neighbouring programs share cos/sin rows and
stream neighbouring memory.
"""
import torch
import triton
import triton.language as tl

DOMAIN = {
    "dtypes": [
        "bfloat16,bfloat16,int64,float32",
        "float16,float16,int64,float32",
        "float32,float32,int64,float32",
        "bfloat16,bfloat16,int64,bfloat16",
        "float16,float16,int64,float16",
    ],
    "contiguous": True,
    "align": 1,
    # A tile holds whole head rows (their widths are constexpr): past 4096 columns one row of one
    # token would not fit in registers. Real heads are 64 to 256 wide.
    "dims": {"head_size": [2, 4096]},
}

# Tunables. A program holds at least MIN_TILE elements of head rows: BLOCK_H heads (the head count
# rounded up to a power of two, at most MAX_HEADS; query and key each their own) of BLOCK_T tokens
# (never more tokens than the call has, rounded up to a power of two). Warps grow with the tile so
# that a thread holds about 16 to 32 elements.
MIN_TILE = 4096  # head-row elements per program, at least (a power of two)
MAX_HEADS = 16  # heads per program, at most (a power of two)
NUM_WARPS = ((16384, 16), (8192, 8), (2048, 4), (512, 2), (0, 1))  # (tile elements at least, num_warps)

# What the catalog provider may change (kforge.gen.providers.catalog): name -> choices.
SEARCH_SPACE = {
    "MIN_TILE": [1024, 2048, 4096, 8192, 16384],
    "MAX_HEADS": [4, 8, 16, 32],
    "NUM_WARPS": [
        ((16384, 16), (8192, 8), (2048, 4), (512, 2), (0, 1)),
        ((8192, 8), (2048, 4), (0, 2)),
        ((16384, 8), (4096, 4), (1024, 2), (0, 1)),
        ((32768, 16), (8192, 8), (4096, 4), (0, 2)),
    ],
}


@triton.jit
def _rotate_heads(x_ptr, y_ptr, cos, sin, token, live_token, heads, head0, HEAD: tl.constexpr,
                  HALF: tl.constexpr, IS_NEOX: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
                  BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr):
    """Heads [head0, head0 + BLOCK_H) of tokens `token` (BLOCK_T, 1, 1) of x, rotated into y;
    cos and sin (BLOCK_T, 1, BLOCK_HALF) in fp32."""
    head = head0 + tl.arange(0, BLOCK_H)[None, :, None]  # (1, BLOCK_H, 1)
    row = (token * heads + head) * HEAD  # (BLOCK_T, BLOCK_H, 1) int64: each head row's first element
    live = live_token & (head < heads)
    if IS_NEOX:
        col = tl.arange(0, BLOCK_HALF)[None, None, :]
        mask = live & (col < HALF)
        x1 = tl.load(x_ptr + row + col, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_T, BLOCK_H, BLOCK_HALF)
        x2 = tl.load(x_ptr + row + HALF + col, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + row + col, (x1 * cos - x2 * sin).to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(y_ptr + row + HALF + col, (x2 * cos + x1 * sin).to(y_ptr.dtype.element_ty), mask=mask)
    else:
        col = tl.arange(0, 2 * BLOCK_HALF)[None, None, :]
        mask = live & (col < 2 * HALF)
        x = tl.load(x_ptr + row + col, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_T, BLOCK_H, 2 * BLOCK_HALF)
        x1, x2 = tl.split(tl.reshape(x, (BLOCK_T, BLOCK_H, BLOCK_HALF, 2)))  # even and odd lanes
        y = tl.join(x1 * cos - x2 * sin, x2 * cos + x1 * sin)  # (BLOCK_T, BLOCK_H, BLOCK_HALF, 2)
        y = tl.reshape(y, (BLOCK_T, BLOCK_H, 2 * BLOCK_HALF))
        tl.store(y_ptr + row + col, y.to(y_ptr.dtype.element_ty), mask=mask)
    if BLOCK_PASS > 0:
        col = tl.arange(0, BLOCK_PASS)[None, None, :]
        mask = live & (col < HEAD - 2 * HALF)
        rest = tl.load(x_ptr + row + 2 * HALF + col, mask=mask)
        tl.store(y_ptr + row + 2 * HALF + col, rest, mask=mask)


@triton.jit
def _rotary_embedding_tile(q_ptr, k_ptr, qo_ptr, ko_ptr, pos_ptr, cache_ptr, tokens, heads, kv_heads, q_blocks,
                           head_blocks, HEAD: tl.constexpr, HALF: tl.constexpr, IS_NEOX: tl.constexpr,
                           BLOCK_T: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
                           BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr):
    pid = tl.program_id(0)
    group = pid // head_blocks
    block = pid - group * head_blocks
    token = group.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)[:, None, None]  # (BLOCK_T, 1, 1)
    live_token = token < tokens
    position = tl.load(pos_ptr + token, mask=live_token, other=0)  # (BLOCK_T, 1, 1) int64
    col = tl.arange(0, BLOCK_HALF)[None, None, :]
    cache_row = cache_ptr + position * (2 * HALF)
    cos = tl.load(cache_row + col, mask=live_token & (col < HALF), other=0.0).to(tl.float32)  # (BLOCK_T, 1, BLOCK_HALF)
    sin = tl.load(cache_row + HALF + col, mask=live_token & (col < HALF), other=0.0).to(tl.float32)
    if block < q_blocks:
        _rotate_heads(q_ptr, qo_ptr, cos, sin, token, live_token, heads, block * BLOCK_HQ, HEAD, HALF, IS_NEOX,
                      BLOCK_T, BLOCK_HQ, BLOCK_HALF, BLOCK_PASS)
    else:
        _rotate_heads(k_ptr, ko_ptr, cos, sin, token, live_token, kv_heads, (block - q_blocks) * BLOCK_HK, HEAD,
                      HALF, IS_NEOX, BLOCK_T, BLOCK_HK, BLOCK_HALF, BLOCK_PASS)


def _num_warps(tile):
    for at_least, warps in NUM_WARPS:
        if tile >= at_least:
            return warps
    return 4


def forward(query, key, positions, cos_sin_cache, is_neox=True):
    tokens, heads, head_size = query.shape
    kv_heads = key.shape[1]
    query_out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    key_out = torch.empty(key.shape, dtype=key.dtype, device=key.device)
    if query_out.numel() + key_out.numel() == 0:
        return query_out, key_out
    half = cos_sin_cache.shape[1] // 2
    block_half = triton.next_power_of_2(half)
    passed = head_size - 2 * half
    block_pass = max(triton.next_power_of_2(passed), 2) if passed else 0
    block_hq = min(triton.next_power_of_2(max(heads, 1)), MAX_HEADS)
    block_hk = min(triton.next_power_of_2(max(kv_heads, 1)), MAX_HEADS)
    per_token = max(block_hq, block_hk) * (2 * block_half + block_pass)  # elements a token adds to a tile
    block_t = 1
    while block_t * per_token < MIN_TILE and block_t < tokens:
        block_t *= 2
    q_blocks = triton.cdiv(heads, block_hq)
    head_blocks = q_blocks + triton.cdiv(kv_heads, block_hk)
    _rotary_embedding_tile[(triton.cdiv(tokens, block_t) * head_blocks,)](
        query, key, query_out, key_out, positions, cos_sin_cache, tokens, heads, kv_heads, q_blocks, head_blocks,
        HEAD=head_size, HALF=half, IS_NEOX=bool(is_neox), BLOCK_T=block_t, BLOCK_HQ=block_hq, BLOCK_HK=block_hk,
        BLOCK_HALF=block_half, BLOCK_PASS=block_pass, num_warps=_num_warps(block_t * per_token))
    return query_out, key_out
