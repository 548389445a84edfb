"""rotary_embedding(query, key, positions, cos_sin_cache, is_neox=True) -> (query_out, key_out): rotary
position embedding (RoPE) of the attention query and key at each token's position, as vLLM's
`rotary_embedding`, but functional: the inputs are left as they are and new tensors returned.

query: (tokens, heads, head_size) and key: (tokens, kv_heads, head_size), one dtype of
bf16/fp16/fp32/fp64; positions: (tokens,) int64 in [0, max_position); cos_sin_cache:
(max_position, rot_dim) in fp32 or the query's dtype, cos(p * f_i) in its first rot_dim / 2
columns and sin(p * f_i) in the last. rot_dim is even, 2 <= rot_dim <= head_size; the dims past
rot_dim pass through unchanged (partial rotary: Phi-2, GPT-J). With c, s the cache row of a
token's position, each pair (x1, x2) of a head becomes (x1 * c_i - x2 * s_i, x2 * c_i + x1 * s_i),
the pairs being
    is_neox=True  (GPT-NeoX, Llama): the halves, x1 = x[:rot_dim/2], x2 = x[rot_dim/2:rot_dim];
    is_neox=False (GPT-J, DeepSeek): interleaved, x1 = x[0:rot_dim:2], x2 = x[1:rot_dim:2].
Computed in fp32 (fp64 for fp64 input) and rounded once; the outputs have query's and key's
shapes and dtype. Positions outside [0, max_position) are refused (`KforgeInputError`) on a CPU,
where `check_values` reads them on every call; on a GPU they are not read (a device sync per call,
impossible under CUDA-graph capture): the vendor device-asserts, a kernel reads outside the cache.

The op's *shape* (what `make_inputs` takes and the shape sets list) is (tokens, heads, kv_heads,
head_size); rot_dim, is_neox and the RoPE base follow from head_size by `rope_config` (a real
model's where one has that head size, else the full even part of the head). The problem is
(tokens, heads, kv_heads, head_size, rot_dim, is_neox).
"""
from __future__ import annotations

import torch

from kforge.errors import KforgeInputError
from kforge.specs import checks
from kforge.specs.spec import FLOAT_DTYPES, Magnitude, OpSpec, generator, randn, resolution_floor

NAME = "rotary_embedding"
DTYPES = FLOAT_DTYPES + (torch.float64,)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox: bool):
    """(x's first 2 * cos.shape[-1] dims rotated by (cos, sin), in the dtype the arithmetic
    promotes to; x's other dims as they are). The caller rounds and joins them."""
    half = cos.shape[-1]
    if is_neox:
        x1, x2 = x[..., :half], x[..., half:2 * half]
    else:
        x1, x2 = x[..., 0:2 * half:2], x[..., 1:2 * half:2]
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    rotated = torch.cat((o1, o2), -1) if is_neox else torch.stack((o1, o2), -1).flatten(-2)
    return rotated, x[..., 2 * half:]


def reference(query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor,
              is_neox: bool = True):
    acc = accumulate_dtype(query.dtype)
    cos, sin = cos_sin_cache[positions].to(acc)[:, None, :].chunk(2, dim=-1)  # (tokens, 1, rot_dim / 2) each
    outs = []
    for x in (query, key):
        rotated, rest = _rotate(x.to(acc), cos, sin, is_neox)
        outs.append(torch.cat((rotated, rest), -1).to(x.dtype))
    return tuple(outs)


def vendor(query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor,
           is_neox: bool = True):
    # vLLM's forward_native, with cos and sin gathered in fp32 (fp64 for fp64): the products then
    # promote to it and round once at the end. vLLM's own casts cos and sin to the query's dtype;
    # with this fp32 cache that measured 1.2x (fp16) to 1.7x (bf16) the error budget at 64 to
    # 512 tokens of Llama 3 8B: the roundings of x1 * c - x2 * s show where the two terms cancel.
    # Indexing, not index_select: on a CPU, index_select's backward (a scatter_add) took 130 ms
    # for a 12-row cache, and fp64 gradcheck runs it once per output element.
    acc = accumulate_dtype(query.dtype)
    cos, sin = cos_sin_cache[positions].to(acc).unsqueeze(-2).chunk(2, dim=-1)  # (tokens, 1, rot_dim / 2)
    outs = []
    for x in (query, key):
        rotated, rest = _rotate(x, cos, sin, is_neox)
        rotated = rotated.to(x.dtype)
        outs.append(torch.cat((rotated, rest), -1) if rest.shape[-1] else rotated)
    return tuple(outs)


def fake(query: torch.Tensor, key: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor,
         is_neox: bool = True):
    return query.new_empty(query.shape), key.new_empty(key.shape)


# RoPE of real models, by head size: head_size -> (rot_dim, is_neox, base).
MODEL_ROPE = {
    64: (64, False, 10000.0),  # DeepSeek V3's decoupled RoPE part (qk_rope_head_dim 64, interleaved)
    80: (32, True, 10000.0),  # Phi-2 (partial_rotary_factor 0.4)
    128: (128, True, 500000.0),  # Llama 3 (Qwen 2.5 and Mixtral: the same layout, base 1e6)
    256: (64, False, 10000.0),  # GPT-J 6B (rotary_dim 64, interleaved)
}


def rope_config(head_size: int) -> tuple[int, bool, float]:
    """(rot_dim, is_neox, base) for a head of `head_size`: a real model's where one has that size,
    else the whole head rounded down to even (an odd head passes its last dim through), base 10000,
    neox when the head holds an even number of pairs, so that the perturbed sizes of secret shapes
    exercise both layouts. head_size must be at least 2."""
    if head_size in MODEL_ROPE:
        return MODEL_ROPE[head_size]
    rot_dim = head_size - head_size % 2
    return rot_dim, (rot_dim // 2) % 2 == 0, 10000.0


def max_positions(tokens: int) -> int:
    """Cache rows for a call of `tokens`: four a token, at least 8 and at most 8192 unless the call
    has more tokens (a prefill of 16384 spans a 16384-position context). Small calls keep a small
    cache: fp64 gradcheck differentiates by every cache element, one forward pair each."""
    return max(min(4 * tokens, 8192), 8, tokens)


def cos_sin_table(max_position: int, rot_dim: int, base: float) -> torch.Tensor:
    """(max_position, rot_dim) float64: cos in the first rot_dim / 2 columns, sin in the rest, of
    the angles p * base^(-2i / rot_dim)."""
    inv_freq = base ** -(torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim)  # (rot_dim / 2,)
    angles = torch.arange(max_position, dtype=torch.float64)[:, None] * inv_freq  # (max_position, rot_dim / 2)
    return torch.cat((angles.cos(), angles.sin()), -1)


def make_inputs(shape, dtype, device, seed):
    """query (tokens, heads, head_size) and key (tokens, kv_heads, head_size) N(0, 1); positions
    uniform in [0, max_positions(tokens)), unsorted (a batch of decode sequences, or packed
    prefills); a cos/sin cache of real RoPE frequencies in fp32 (fp64 for fp64 input, so gradcheck
    works); rot_dim and is_neox from `rope_config(head_size)`. A shape (tokens, head_size) means one
    query and one key head: the (rows, width) shapes of kforge's op-agnostic checks (the evaluator's
    long row (2, 16384), the launcher's replay test) are calls too."""
    if len(shape) == 2:
        shape = (shape[0], 1, 1, shape[1])
    tokens, heads, kv_heads, head_size = shape
    rot_dim, is_neox, base = rope_config(head_size)
    gen = generator(seed, device)
    query = randn((tokens, heads, head_size), dtype, device, gen)
    key = randn((tokens, kv_heads, head_size), dtype, device, gen)
    max_position = max_positions(tokens)
    positions = torch.randint(0, max_position, (tokens,), generator=gen, device=gen.device).to(device)  # (tokens,) int64
    cache = cos_sin_table(max_position, rot_dim, base).to(device=device, dtype=accumulate_dtype(dtype))
    return (query, key, positions, cache, is_neox)


def check(args) -> None:
    query, key, positions, cos_sin_cache, is_neox = args
    checks.floating_tensor(NAME, "query", query, DTYPES)
    if query.dim() != 3:
        raise KforgeInputError(NAME, "query", f"must have shape (tokens, heads, head_size), got {tuple(query.shape)}")
    tokens, _, head_size = query.shape
    checks.floating_tensor(NAME, "key", key, DTYPES)
    if key.dtype != query.dtype:
        raise KforgeInputError(NAME, "key", f"has dtype {key.dtype} but 'query' has {query.dtype}")
    checks.same_device(NAME, "query", query, "key", key)
    if key.dim() != 3 or key.shape[0] != tokens or key.shape[2] != head_size:
        raise KforgeInputError(NAME, "key", f"must have shape ({tokens}, kv_heads, {head_size}) to match 'query', "
                                            f"got {tuple(key.shape)}")
    if not isinstance(positions, torch.Tensor):
        raise KforgeInputError(NAME, "positions", f"must be a torch.Tensor, got {type(positions).__name__}")
    if positions.dtype != torch.int64:
        raise KforgeInputError(NAME, "positions", f"has dtype {positions.dtype}; kforge.{NAME} takes int64")
    checks.same_device(NAME, "query", query, "positions", positions)
    if positions.dim() != 1 or positions.shape[0] != tokens:
        raise KforgeInputError(NAME, "positions", f"must have shape ({tokens},) to match the tokens of 'query', "
                                                  f"got {tuple(positions.shape)}")
    cache_dtypes = (torch.float32, query.dtype) if query.dtype != torch.float32 else (torch.float32,)
    checks.floating_tensor(NAME, "cos_sin_cache", cos_sin_cache, cache_dtypes)
    checks.same_device(NAME, "query", query, "cos_sin_cache", cos_sin_cache)
    if cos_sin_cache.dim() != 2:
        raise KforgeInputError(NAME, "cos_sin_cache", f"must have shape (max_position, rot_dim), "
                                                      f"got {tuple(cos_sin_cache.shape)}")
    if tokens and not cos_sin_cache.shape[0]:
        raise KforgeInputError(NAME, "cos_sin_cache", "has no rows (max_position 0): no position can index it")
    rot_dim = cos_sin_cache.shape[1]
    if rot_dim % 2 or not 2 <= rot_dim <= head_size:
        raise KforgeInputError(NAME, "cos_sin_cache", f"must have an even last dim rot_dim in [2, {head_size}] "
                                                      f"(the head_size of 'query'), got {tuple(cos_sin_cache.shape)}")
    if not isinstance(is_neox, (bool, torch.SymBool)):
        raise KforgeInputError(NAME, "is_neox", f"must be a bool, got {type(is_neox).__name__}")


def check_values(args) -> None:
    positions, cos_sin_cache = args[2], args[3]
    checks.in_range(NAME, "positions", positions, cos_sin_cache.shape[0], "the rows of 'cos_sin_cache'")


def problem(args):
    query, key, _, cos_sin_cache, is_neox = args
    tokens, heads, head_size = query.shape
    return (tokens, heads, key.shape[1], head_size, cos_sin_cache.shape[1], int(bool(is_neox)))


def input_shape(problem):
    """(tokens, heads, kv_heads, head_size): make_inputs derives rot_dim and is_neox from head_size
    by `rope_config`, so a problem with another rotary layout is served its head size's."""
    return tuple(problem[:4])


def bytes_moved(problem, dtype) -> int:
    """query and key read and written once, a token's cache row (fp32; fp64 for fp64) and its
    position read per token."""
    tokens, heads, kv_heads, head_size, rot_dim, _ = problem
    size = torch.finfo(dtype).bits // 8
    cache_size = 8 if dtype == torch.float64 else 4
    return 2 * tokens * (heads + kv_heads) * head_size * size + tokens * (rot_dim * cache_size + 8)


SPEC = OpSpec(
    name=NAME,
    schema=("rotary_embedding(Tensor query, Tensor key, Tensor positions, Tensor cos_sin_cache, "
            "bool is_neox=True) -> (Tensor, Tensor)"),
    description="Rotary position embedding of query and key at each token's position, from a cos/sin cache",
    reference=reference,
    vendor=vendor,
    fake=fake,
    make_inputs=make_inputs,
    check=check,
    check_values=check_values,
    problem=problem,
    problem_dims=("tokens", "heads", "kv_heads", "head_size", "rot_dim", "is_neox"),
    exact_dims=("heads", "kv_heads", "head_size", "rot_dim", "is_neox"),
    dtypes=DTYPES,
    # Each output is a two-term sum (x1 * c - x2 * s) of N(0, 1) inputs: a rotation keeps the scale.
    tolerance=lambda dtype, problem: resolution_floor(dtype, 2),
    bytes_moved=bytes_moved,
    # Per pair: four products and two sums.
    flops=lambda problem, dtype: 3 * problem[0] * (problem[1] + problem[2]) * problem[4],
    shape_sets={
        # Shapes are (tokens, heads, kv_heads, head_size); see rope_config for the layout each gets.
        # Small: fp64 gradcheck differentiates by every element of query, key and the cache.
        "smoke": ((2, 2, 1, 16), (3, 2, 1, 64)),  # neox full; interleaved full
        # 17: neox, one dim passed through; 127: interleaved, one passed; 80: Phi-2's partial neox;
        # 66: interleaved, an odd pair count; 256: GPT-J's partial interleaved.
        "odd": ((5, 3, 1, 17), (3, 7, 3, 127), (7, 28, 4, 80), (2, 5, 5, 66), (1, 3, 2, 256), (9, 28, 4, 128)),
        # (1, 1, 1, 2): one pair; (4, 1, 1, 3): one pair and one passed dim.
        "edge": ((0, 32, 8, 128), (1, 1, 1, 2), (4, 1, 1, 3), (64, 1, 1, 128)),
        # Llama 3 8B / Mixtral (32, 8), Llama 3 70B (64, 8), Qwen 2.5 7B (28, 4): head 128, neox;
        # DeepSeek V3's RoPE part: 128 heads of 64, one shared key head, interleaved.
        "decode": ((1, 32, 8, 128), (8, 64, 8, 128), (32, 28, 4, 128), (64, 32, 8, 128), (16, 128, 1, 64)),
        "prefill": ((4096, 32, 8, 128), (8192, 64, 8, 128), (16384, 28, 4, 128), (16384, 32, 8, 128),
                    (4096, 128, 1, 64), (4096, 32, 32, 80)),
    },
    num_outputs=2,
    input_shape=input_shape,
    # A rotation: outputs are linear in query and key.
    magnitudes=(Magnitude(2.0 ** -10, ("query", "key"), output=2.0 ** -10),
                Magnitude(2.0 ** 7, ("query", "key"), output=2.0 ** 7)),
    # The other pairing over the same cache (rot_dim is even for every head size).
    scalar_variants={"is_neox": (True, False)},
    seed_kernels=("rotary_embedding_tiled.py",),
)
