"""topk_softmax(x, k, renormalize=False) -> (weights, indices): the MoE router's top-k of a softmax.

x: (..., experts) router logits in bf16/fp16/fp32/fp64. The softmax over experts is computed in
fp32 (fp64 for fp64 input); weights: (..., k) float32 (float64 for fp64 input, so gradcheck
works) and indices: (..., k) int32 are its k largest entries in descending weight order.
renormalize=True divides the k weights by their sum (Mixtral, Qwen3); False keeps the softmax
values (Qwen1.5-MoE, DeepSeek-V2-Lite).

Ties may break either way, so outputs are compared through `compare_view`: the weights as they
are, and the indices through the fp64 softmax entries they select; indices out of range or
repeated within a row are an `OutputMismatch`. A row whose softmax is NaN (a NaN or +inf logit,
or all -inf) has NaN weights and may hold any k distinct in-range indices: torch.topk, which the
reference and the vendor use, returns an arbitrary such set there (on a CPU, 6, 5, 4 for k=3 of 8).
"""
from __future__ import annotations

import torch

from kforge.errors import KforgeInputError
from kforge.specs import checks
from kforge.specs.spec import FLOAT_DTYPES, Magnitude, OpSpec, OutputMismatch, generator, prod, randn, resolution_floor

NAME = "topk_softmax"
DTYPES = FLOAT_DTYPES + (torch.float64,)


_F32, _F64 = torch.float32, torch.float64


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference(x: torch.Tensor, k: int, renormalize: bool = False):
    xf = x.to(accumulate_dtype(x.dtype))
    e = torch.exp(xf - xf.amax(-1, keepdim=True))
    weights, indices = (e / e.sum(-1, keepdim=True)).topk(k, dim=-1)  # (..., k), descending
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, indices.to(torch.int32)


def vendor(x: torch.Tensor, k: int, renormalize: bool = False):
    # Written for host cost, which decides decode-sized calls: no Python helper call and no keyword
    # arguments (topk's dim is -1 by default), `.int()` for the contract's int32 indices. 1.5-1.7 us
    # less per call than the same ops spelled with them (2-core CPU, 4x64, bf16 and fp32).
    weights, indices = torch.softmax(x, -1, dtype=_F64 if x.dtype is _F64 else _F32).topk(k)
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, indices.int()


def fake(x: torch.Tensor, k: int, renormalize: bool = False):
    shape = (*x.shape[:-1], k)
    return x.new_empty(shape, dtype=accumulate_dtype(x.dtype)), x.new_empty(shape, dtype=torch.int32)


# Routing of real models, by expert count: experts -> (k, renormalize).
MODEL_ROUTING = {
    8: (2, True),  # Mixtral 8x7B / 8x22B
    60: (4, False),  # Qwen1.5-MoE-A2.7B
    64: (6, False),  # DeepSeek-V2-Lite
    128: (8, True),  # Qwen3-30B-A3B / 235B-A22B
    256: (8, True),  # DeepSeek-V3's expert count (its own gate is a grouped sigmoid)
}


def routing(experts: int) -> tuple[int, bool]:
    """(k, renormalize) for a router over `experts`: a real model's where one has that count,
    else k = 2 up to 16 experts and 4 above (at most `experts`), renormalized when `experts` is
    odd, so that the perturbed sizes of secret shapes exercise both modes."""
    if experts in MODEL_ROUTING:
        return MODEL_ROUTING[experts]
    return min(experts, 2 if experts <= 16 else 4), experts % 2 == 1


def make_inputs(shape, dtype, device, seed):
    """x of `shape` (..., experts), N(0, 1) logits as a trained gate gives (bf16 has ties among
    them at a few hundred experts); k and renormalize from `routing(experts)`."""
    x = randn(shape, dtype, device, generator(seed, device))
    k, renormalize = routing(shape[-1])
    return (x, k, renormalize)


def check(args) -> None:
    x, k, renormalize = args
    checks.floating_tensor(NAME, "x", x, DTYPES)
    checks.min_rank(NAME, "x", x, 1)
    experts = x.shape[-1]
    if isinstance(k, bool) or not isinstance(k, (int, torch.SymInt)):
        raise KforgeInputError(NAME, "k", f"must be an int, got {type(k).__name__}")
    if not 1 <= k <= experts:
        raise KforgeInputError(NAME, "k", f"must be in [1, {experts}] (the last dim of 'x'), got {k}")
    if not isinstance(renormalize, (bool, torch.SymBool)):
        raise KforgeInputError(NAME, "renormalize", f"must be a bool, got {type(renormalize).__name__}")


def problem(args):
    x, k, renormalize = args
    return (prod(x.shape[:-1]), x.shape[-1], k, int(bool(renormalize)))  # (tokens, experts, k, renormalize)


def input_shape(problem):
    """(tokens, experts): make_inputs derives k and renormalize from experts by `routing`, so a
    problem with another k is served its expert count's routing, not its own."""
    tokens, experts = problem[:2]
    return (tokens, experts)


def compare_view(args, outputs):
    """(weights, the fp64 softmax entries the indices select, at the weights' dtype): equal for a
    tie broken either way. Raises OutputMismatch for indices out of range or repeated in a row."""
    x = args[0]
    weights, indices = outputs
    experts = x.shape[-1]
    if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
        raise OutputMismatch(f"indices have dtype {indices.dtype}, not an integer dtype")
    idx = indices.long()
    if idx.numel():
        outside = (idx < 0) | (idx >= experts)
        if outside.any():
            at = tuple(int(i) for i in outside.nonzero()[0])
            raise OutputMismatch(f"index {int(idx[at])} at {at} is outside [0, {experts})")
        ordered = idx.sort(-1).values
        repeated = ordered[..., 1:] == ordered[..., :-1]
        if repeated.any():
            at = tuple(int(i) for i in repeated.nonzero()[0])
            raise OutputMismatch(f"index {int(ordered[at])} appears twice in row {at[:-1]}")
    p = torch.softmax(x.detach().to(torch.float64), -1)  # (..., experts)
    return weights, p.gather(-1, idx.to(p.device)).to(weights.dtype)


def tolerance(dtype, problem):
    # A softmax entry averages 1/experts; the relative term covers the k large ones.
    experts = max(problem[1], 1)
    return resolution_floor(dtype, experts, scale=1.0 / experts)


def bytes_moved(problem, dtype) -> int:
    """x read once; k float32 weights and k int32 indices written per token."""
    tokens, experts, k, _ = problem
    return tokens * experts * (torch.finfo(dtype).bits // 8) + tokens * k * (4 + 4)


SPEC = OpSpec(
    name=NAME,
    schema="topk_softmax(Tensor x, int k, bool renormalize=False) -> (Tensor, Tensor)",
    description="MoE router: the k largest entries of softmax(x) over the last dim, as (weights, int32 indices)",
    reference=reference,
    vendor=vendor,
    fake=fake,
    make_inputs=make_inputs,
    check=check,
    problem=problem,
    problem_dims=("tokens", "experts", "k", "renormalize"),
    exact_dims=("experts", "k", "renormalize"),
    dtypes=DTYPES,
    tolerance=tolerance,
    bytes_moved=bytes_moved,
    # The softmax (~5 per element) and one comparison per element for each of the k picks.
    flops=lambda problem, dtype: problem[0] * problem[1] * (5 + problem[2]),
    shape_sets={
        "smoke": ((4, 64), (2, 3, 8)),
        "odd": ((3, 60), (5, 17), (7, 129), (2, 3, 33), (1, 255)),
        # (4, 2): k == experts, every expert picked.
        "edge": ((0, 64), (1, 1), (64, 1), (4, 2), (1, 8)),
        "decode": ((1, 64), (8, 8), (32, 128), (64, 256)),
        "prefill": ((4096, 8), (4096, 64), (4096, 128), (4096, 256), (32768, 128)),
    },
    num_outputs=2,
    compare_view=compare_view,
    input_shape=input_shape,
    # Near-ties everywhere, and one dominant expert per token: probabilities either way.
    magnitudes=(Magnitude(2.0 ** -10, ("x",)), Magnitude(2.0 ** 5, ("x",))),
    # k and renormalize are exact dims: these variants are problems of their own in the evidence.
    scalar_variants={"k": (1,), "renormalize": (False, True)},
    seed_kernels=("topk_softmax_rowwise.py",),
)
