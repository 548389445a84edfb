"""rotary_embedding's own cases; the generic tests (test_ops, test_bad_input, test_autograd,
test_catalog_provider, test_triton_backend) cover what every op shares.

- the reference against RoPE as a complex product, (x1 + i x2) * e^(i p f), from angles computed
  here (not from the cache), in both pair layouts, partial rotary included; the pass-through dims
  bitwise; RoPE's defining property: q.k after rotation depends on the positions' difference only;
- the vendor with an fp32 cache and with one in the query's dtype, in both layouts;
- the shape convention (rope_config, make_inputs, problem, input_shape, bytes);
- bad calls refused naming the argument, through both entry points;
- the catalog seed on a cache in the query's dtype and on layouts make_inputs never draws; on NaN
  and Inf (which the rotation spreads to a pair's partner).
The vendor within the budget, the seed through the router, the harness and its forced token
tiles and head blocks are the grids' (test_ops, test_seeds).
"""
from __future__ import annotations

import pytest
import torch


import kforge
from kforge.catalog import seeds
from kforge.ops import SPECS
from kforge.errors import KforgeInputError
from kforge.specs.rotary_embedding import (MODEL_ROPE, SPEC, cos_sin_table, make_inputs, max_positions, reference,
                                         rope_config)
from kforge.store import KernelStore
from kforge.testing import compare

DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
CPU_SETS = ("smoke", "odd", "edge")
ENTRIES = ("eager", "torch_ops")


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def entry_point(entry: str):
    return kforge.ops.rotary_embedding if entry == "eager" else torch.ops.kforge.rotary_embedding


def rope_complex(x: torch.Tensor, positions: torch.Tensor, rot_dim: int, base: float, is_neox: bool) -> torch.Tensor:
    """RoPE by its definition in fp64: each pair (x1, x2) as x1 + i x2 times e^(i p base^(-2j/rot_dim)),
    the angles computed from the positions here; the dims past rot_dim as they are."""
    x = x.to(torch.float64)
    half = rot_dim // 2
    if is_neox:
        pairs = torch.complex(x[..., :half], x[..., half:rot_dim])
    else:
        pairs = torch.view_as_complex(x[..., :rot_dim].reshape(*x.shape[:-1], half, 2).contiguous())
    freq = base ** (-torch.arange(half, dtype=torch.float64) * 2 / rot_dim)  # (half,)
    angles = positions.double()[:, None, None] * freq  # (tokens, 1, half)
    turned = pairs * torch.polar(torch.ones_like(angles), angles)  # (tokens, heads, half)
    if is_neox:
        rotated = torch.cat((turned.real, turned.imag), -1)
    else:
        rotated = torch.view_as_real(turned).flatten(-2)
    return torch.cat((rotated, x[..., rot_dim:]), -1)


def call_args(tokens, heads, kv_heads, head_size, rot_dim, is_neox, dtype, base=10000.0, seed=0,
              cache_dtype=None, max_position=64):
    """A call with any rotary layout (make_inputs gives each head size one)."""
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(tokens, heads, head_size, generator=gen).to(dtype)
    key = torch.randn(tokens, kv_heads, head_size, generator=gen).to(dtype)
    positions = torch.randint(0, max_position, (tokens,), generator=gen)
    cache = cos_sin_table(max_position, rot_dim, base).to(cache_dtype or (torch.float64 if dtype == torch.float64
                                                                          else torch.float32))
    return (query, key, positions, cache, is_neox)


# Layouts beyond what make_inputs derives: partial and full, both pair orders, odd pair counts.
LAYOUTS = [(head, rot, neox) for head, rot in ((16, 16), (24, 8), (20, 6), (9, 8), (4, 2)) for neox in (True, False)]


# -- the reference -----------------------------------------------------------------------------------
@pytest.mark.parametrize("head_size, rot_dim, is_neox", LAYOUTS, ids=lambda v: str(v))
def test_reference_is_rope_as_a_complex_product(head_size, rot_dim, is_neox):
    for dtype in DTYPES:
        args = call_args(5, 3, 2, head_size, rot_dim, is_neox, dtype, base=500000.0, max_position=4096)
        q, k = reference(*args)
        positions = args[2]
        for x, got in ((args[0], q), (args[1], k)):
            assert got.dtype == dtype and got.shape == x.shape
            exact = rope_complex(x, positions, rot_dim, 500000.0, is_neox)
            # One rounding of a computation in fp32 (fp64 for fp64), from a cache rounded to fp32
            # (the angles here are exact); the bound is relative to the pair's norm, which a
            # rotation keeps (the two terms of x1 * c - x2 * s may cancel).
            acc = torch.float64 if dtype == torch.float64 else torch.float32
            rel = 0.5 * torch.finfo(dtype).eps + 8 * torch.finfo(acc).eps
            scale = x.double().abs().amax(-1, keepdim=True)
            err = (got.double() - exact).abs()
            assert (err[..., :rot_dim] <= rel * exact.abs()[..., :rot_dim] + 2 * rel * scale).all(), \
                f"{dtype_id(dtype)}: worst {float(err.max()):.3g}"
            assert torch.equal(got[..., rot_dim:], x[..., rot_dim:])  # passed through bit for bit


def test_rotation_depends_only_on_the_positions_difference():
    """q.k of a query rotated to position m and a key rotated to n is a function of m - n: moving
    both by the same offset keeps every score (fp64, cache from exact angles)."""
    for head_size, rot_dim, is_neox in ((64, 64, False), (128, 128, True), (80, 32, True)):
        q0, k0, _, cache, _ = call_args(6, 4, 4, head_size, rot_dim, is_neox, torch.float64, max_position=512)
        m = torch.tensor([0, 3, 17, 100, 255, 400])
        scores = []
        for offset in (0, 7, 111):
            q, _ = reference(q0, k0, m + offset, cache, is_neox)
            _, k = reference(q0, k0, m.flip(0) + offset, cache, is_neox)
            scores.append(torch.einsum("thd,thd->th", q, k))
        torch.testing.assert_close(scores[1], scores[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(scores[2], scores[0], rtol=1e-12, atol=1e-12)
        # Not vacuous: unrotated scores differ, and position 0 is the identity.
        assert not torch.allclose(scores[0], torch.einsum("thd,thd->th", q0, k0))
        q, k = reference(q0, k0, torch.zeros(6, dtype=torch.int64), cache, is_neox)
        assert torch.equal(q, q0) and torch.equal(k, k0)


def test_the_layouts_differ_and_the_flag_picks_them():
    args = call_args(4, 2, 1, 16, 16, True, torch.float64)
    neox, interleaved = reference(*args[:4], True), reference(*args[:4], False)
    assert not torch.allclose(neox[0], interleaved[0])
    for flag, got in ((True, neox), (False, interleaved)):
        torch.testing.assert_close(got[0], rope_complex(args[0], args[2], 16, 10000.0, flag), rtol=1e-13, atol=1e-13)


# -- shapes and sizes --------------------------------------------------------------------------------
def test_the_shape_gives_the_layout_of_a_real_model():
    assert MODEL_ROPE[128] == (128, True, 500000.0) and MODEL_ROPE[64][:2] == (64, False)
    assert rope_config(80)[:2] == (32, True) and rope_config(256)[:2] == (64, False)
    # Elsewhere the whole even part of the head, neox for an even pair count: odd heads (the
    # secret shapes perturb head_size to odd values) pass one dim through; both layouts occur.
    assert rope_config(17)[:2] == (16, True) and rope_config(127)[:2] == (126, False)
    assert rope_config(2)[:2] == (2, False) and rope_config(3)[:2] == (2, False)
    configs = [rope_config(h) for h in range(2, 600)]
    assert all(2 <= r <= h and r % 2 == 0 for h, (r, _, _) in zip(range(2, 600), configs))
    assert {neox for _, neox, _ in configs} == {False, True}
    query, key, positions, cache, is_neox = make_inputs((5, 4, 2, 80), torch.bfloat16, "cpu", 0)
    assert query.shape == (5, 4, 80) and key.shape == (5, 2, 80) and is_neox is True
    assert cache.shape == (max_positions(5), 32) and cache.dtype == torch.float32
    assert positions.dtype == torch.int64 and 0 <= int(positions.min()) and int(positions.max()) < cache.shape[0]
    torch.testing.assert_close(cache[:, :16] ** 2 + cache[:, 16:] ** 2, torch.ones(cache.shape[0], 16))
    assert make_inputs((2, 1, 1, 64), torch.float64, "cpu", 0)[3].dtype == torch.float64
    assert max_positions(0) == 8 and max_positions(64) == 256 and max_positions(4096) == 8192
    assert max_positions(16384) == 16384


def test_problem_and_input_shape_round_trip():
    args = make_inputs((6, 28, 4, 128), torch.bfloat16, "cpu", 0)
    assert SPEC.problem(args) == (6, 28, 4, 128, 128, 1)
    assert SPEC.problem(args[:4] + (False,)) == (6, 28, 4, 128, 128, 0)
    assert SPEC.shape_for((4096, 128, 1, 64, 64, 0)) == (4096, 128, 1, 64)
    for shape in SPEC.shapes():
        rot_dim, is_neox, _ = rope_config(shape[3])
        problem = (*shape, rot_dim, int(is_neox))
        assert SPEC.shape_for(problem) == shape
        if shape in SPEC.shapes(*CPU_SETS):  # drawing prefill-sized data on the CPU takes seconds
            args = make_inputs(shape, torch.float32, "cpu", 0)
            SPEC.check(args)
            assert SPEC.problem(args) == problem
    # q and k read and written at their dtype, a token's fp32 cache row and int64 position.
    assert SPEC.bytes_moved((4096, 32, 8, 128, 128, 1), torch.bfloat16) == 4096 * (2 * 40 * 128 * 2 + 128 * 4 + 8)
    assert SPEC.flops((2, 4, 2, 80, 32, 1), torch.float32) == 3 * 2 * 6 * 32


# -- bad calls ---------------------------------------------------------------------------------------
def _bad(name, make):
    return pytest.param(name, make, id=f"{name}-{make.__name__}")


def short_key(a):
    return a[1][:, :, :-1]


def other_tokens_key(a):
    return a[1][:-1]


def key_2d(a):
    return a[1][:, 0]


def key_fp64(a):
    return a[1].double()


def positions_int32(a):
    return a[2].int()


def positions_float(a):
    return a[2].float()


def positions_short(a):
    return a[2][:-1]


def positions_2d(a):
    return a[2][:, None]


def positions_list(a):
    return a[2].tolist()


def cache_odd(a):
    return a[3][:, :-1]


def cache_wider_than_head(a):
    return torch.cat((a[3], a[3]), -1)


def cache_empty_rows(a):
    return a[3][:, :0]


def cache_fp16(a):
    return a[3].half()


def cache_3d(a):
    return a[3][None]


def query_2d(a):
    return a[0][:, 0]


BAD = [
    _bad("key", short_key), _bad("key", other_tokens_key), _bad("key", key_2d), _bad("key", key_fp64),
    _bad("positions", positions_int32), _bad("positions", positions_float), _bad("positions", positions_short),
    _bad("positions", positions_2d), _bad("cos_sin_cache", cache_odd), _bad("cos_sin_cache", cache_wider_than_head),
    _bad("cos_sin_cache", cache_empty_rows), _bad("cos_sin_cache", cache_fp16), _bad("cos_sin_cache", cache_3d),
    _bad("query", query_2d),
]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("name, make", BAD)
def test_bad_arguments_are_refused_naming_them(name, make, entry):
    args = make_inputs((3, 4, 2, 16), torch.float32, "cpu", 0)
    bad = list(args)
    bad[SPEC.arg_names.index(name)] = make(args)
    with pytest.raises(KforgeInputError, match=f"argument '{name}'") as info:
        entry_point(entry)(*bad)
    assert (info.value.op, info.value.arg) == ("rotary_embedding", name)
    assert compare(SPEC, args, entry_point(entry)(*args)).ok  # the next valid call is served


@pytest.mark.parametrize("is_neox", [1, 0.0, None, torch.tensor(True)], ids=repr)
def test_is_neox_that_is_no_bool_is_refused(is_neox):
    """Through kforge.ops; torch.ops' schema parsing refuses or converts these before kforge sees them."""
    args = make_inputs((3, 4, 2, 16), torch.float32, "cpu", 0)
    with pytest.raises(KforgeInputError, match="argument 'is_neox' must be a bool"):
        kforge.ops.rotary_embedding(*args[:4], is_neox)
    with pytest.raises(KforgeInputError, match="argument 'positions' must be a torch.Tensor"):
        kforge.ops.rotary_embedding(args[0], args[1], positions_list(args), args[3])


def test_a_cache_in_the_querys_dtype_is_served_and_so_is_the_other_layout():
    for dtype in (torch.bfloat16, torch.float16):
        args = make_inputs((5, 4, 2, 24), dtype, "cpu", 1)
        for cache in (args[3], args[3].to(dtype)):
            for is_neox in (True, False):
                call = (*args[:3], cache, is_neox)
                for entry in ENTRIES:
                    result = compare(SPEC, call, entry_point(entry)(*call))
                    assert result.ok, result.message


# -- the catalog seed --------------------------------------------------------------------------------
def load_seed():
    (path,) = seeds(SPECS["rotary_embedding"])
    store = KernelStore()
    return store.load(store.put(path.read_text(), op=SPEC.name, provider="catalog").sha256, SPEC)


def test_the_seed_takes_a_cache_in_the_querys_dtype_and_either_layout():
    candidate = load_seed()
    for dtype in (torch.bfloat16, torch.float16):
        for head_size, rot_dim in ((24, 24), (24, 8), (9, 8)):
            for is_neox in (True, False):
                args = call_args(5, 3, 2, head_size, rot_dim, is_neox, dtype, seed=head_size, cache_dtype=dtype)
                result = compare(SPEC, args, candidate.forward(*args))
                assert result.ok, f"{dtype_id(dtype)} {head_size}/{rot_dim} neox={is_neox}: {result.message}"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, in the interpreter, on inf * 0
def test_the_seed_keeps_the_references_nan_and_inf():
    """A NaN spreads to its pair's partner only; +inf at position 0 (sin 0) makes inf * 0 = NaN in
    the partner and stays inf itself; a NaN in a passed-through dim stays there."""
    candidate = load_seed()
    for is_neox in (True, False):
        query, key, positions, cache, _ = call_args(4, 2, 1, 9, 8, is_neox, torch.float32)
        positions[1] = 0
        query[0, 1, 2] = float("nan")
        query[1, 0, 3] = float("inf")
        key[2, 0, 8] = float("nan")  # the passed-through dim
        args = (query, key, positions, cache, is_neox)
        want_q, want_k = reference(*args)
        partner = 6 if is_neox else 3  # of dim 2: 2 + rot_dim / 2, or its interleaved neighbour
        assert want_q[0, 1].isnan().nonzero().flatten().tolist() == sorted([2, partner])
        assert want_q[1, 0, 3] == float("inf") and want_q[1, 0].isnan().sum() == 1
        assert want_k.isnan().sum() == 1
        got = candidate.forward(*args)
        result = compare(SPEC, args, got)
        assert result.ok, result.message
        for g, w in zip(got, (want_q, want_k)):
            assert torch.equal(g.isnan(), w.isnan()) and torch.equal(g.isinf(), w.isinf())
