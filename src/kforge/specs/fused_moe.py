"""fused_moe(x, gate_up, down, topk_weights, topk_ids) -> y: a mixture-of-experts layer's experts
with a SwiGLU gate, as Hugging Face's fused experts (transformers 5: `MixtralExperts`,
`Qwen3MoeExperts`) and vLLM's `fused_moe` compute them.

x: (tokens, hidden); gate_up: (experts, 2 * inter, hidden), the gate's rows first, then the up's
(HF's `gate_up_proj`); down: (experts, hidden, inter) (HF's `down_proj`), both of x's dtype;
topk_weights: (tokens, k), fp32 or x's dtype; topk_ids: (tokens, k) int32/int64 in [0, experts).
For each token t and slot j, with e = topk_ids[t, j] and [g, u] = gate_up[e] @ x[t]:
    y[t] = sum_j topk_weights[t, j] * (down[e] @ (silu(g) * u))
The GEMMs and the weighted sum are computed in fp32 (fp64 for fp64 input); the intermediate
silu(g) * u is rounded once to x's dtype (every fused MoE kernel stores it between its two GEMMs),
and y once. Slots are independent: a token may name an expert twice. Ids outside [0, experts) are
refused (`KforgeInputError`) on a CPU, where `check_values` reads them; on a GPU they are not read
(a device sync per call): the vendor device-asserts, a kernel skips them.

The op's shape (what `make_inputs` takes and the shape sets list) and its problem are
(tokens, hidden, inter, experts, k).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kforge.errors import KforgeInputError
from kforge.specs import checks
from kforge.specs.spec import FLOAT_DTYPES, Magnitude, OpSpec, Tolerance, generator, randn, resolution_floor

NAME = "fused_moe"
DTYPES = FLOAT_DTYPES + (torch.float64,)
ID_DTYPES = (torch.int32, torch.int64)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference(x, gate_up, down, topk_weights, topk_ids):
    # Every expert on every token, weighted by the slots routed to it (zero elsewhere): no
    # data-dependent shapes, so the reference traces for autograd and torch.compile as it is.
    acc = accumulate_dtype(x.dtype)
    inter = down.shape[2]
    xf = x.to(acc)
    weights = topk_weights.to(acc)
    y = torch.zeros((x.shape[0], x.shape[1]), dtype=acc, device=x.device)  # (tokens, hidden)
    for e in range(gate_up.shape[0]):
        h = xf @ gate_up[e].to(acc).T  # (tokens, 2 * inter)
        a = (F.silu(h[:, :inter]) * h[:, inter:]).to(x.dtype).to(acc)  # the stored intermediate
        routed = (weights * (topk_ids == e)).sum(-1)  # (tokens,): expert e's share of each token
        y = y + (a @ down[e].to(acc).T) * routed[:, None]
    return y.to(x.dtype)


_GROUPED: dict[tuple[str, torch.dtype], bool] = {}  # (device type, dtype) -> torch._grouped_mm runs there


def _grouped_ok(x: torch.Tensor) -> bool:
    key = (x.device.type, x.dtype)
    if key not in _GROUPED:
        ok = hasattr(torch, "_grouped_mm") and x.dtype in FLOAT_DTYPES
        if ok:
            try:  # a 2-group call: some builds and GPUs lack the kernel for a dtype (fp32 before sm90...)
                a = torch.zeros((2, 16), dtype=x.dtype, device=x.device)
                b = torch.zeros((2, 16, 16), dtype=x.dtype, device=x.device)
                torch._grouped_mm(a, b.transpose(1, 2), offs=torch.tensor([1, 2], dtype=torch.int32, device=x.device))
            except (RuntimeError, TypeError, NotImplementedError):
                ok = False
        _GROUPED[key] = ok
    return _GROUPED[key]


def vendor(x, gate_up, down, topk_weights, topk_ids):
    # The slots sorted by expert, each expert's rows one group of torch._grouped_mm (one GEMM per
    # projection, no host sync, capturable in a CUDA graph); where that kernel is missing (fp64,
    # unaligned rows), one GEMM per expert hit after one sync for the counts. The sum over slots is
    # a fixed-order reduction (no atomics): the same bits every run.
    acc = accumulate_dtype(x.dtype)
    tokens, hidden = x.shape
    experts, inter, k = gate_up.shape[0], down.shape[2], topk_ids.shape[1]
    flat = topk_ids.reshape(-1).long()  # (tokens * k,)
    order = flat.argsort(stable=True)
    rows = x[order // k]  # (tokens * k, hidden), grouped by expert
    counts = torch.bincount(flat, minlength=experts)
    if _grouped_ok(x) and hidden % 8 == 0 and inter % 8 == 0:
        offs = counts.cumsum(0).to(torch.int32)
        gate_up, down = gate_up.contiguous(), down.contiguous()  # the GEMM's layout (a no-op for HF's weights)
        h = torch._grouped_mm(rows, gate_up.transpose(1, 2), offs=offs)  # (tokens * k, 2 * inter)
        a = (F.silu(h[:, :inter].to(acc)) * h[:, inter:].to(acc)).to(x.dtype)
        out = torch._grouped_mm(a, down.transpose(1, 2), offs=offs)  # (tokens * k, hidden)
    else:
        parts, start = [], 0
        for e, n in enumerate(counts.tolist()):
            if n:
                h = rows[start:start + n] @ gate_up[e].T  # (n, 2 * inter)
                a = (F.silu(h[:, :inter].to(acc)) * h[:, inter:].to(acc)).to(x.dtype)
                parts.append(a @ down[e].T)
                start += n
        out = torch.cat(parts) if parts else rows.new_empty((0, hidden))
    weighted = out.to(acc) * topk_weights.reshape(-1)[order].to(acc)[:, None]
    slots = torch.empty_like(weighted)
    slots[order] = weighted
    return slots.view(tokens, k, hidden).sum(1).to(x.dtype)


def fake(x, gate_up, down, topk_weights, topk_ids):
    return x.new_empty((x.shape[0], x.shape[1]))


def make_inputs(shape, dtype, device, seed):
    """x N(0, 1); each expert's weights N(0, 1 / fan-in) as a trained layer's, so every stage stays
    near unit scale; k distinct experts per token, uniformly, with weights summing to 1 (fp32; fp64
    for fp64 x)."""
    tokens, hidden, inter, experts, k = shape
    gen = generator(seed, device)
    x = randn((tokens, hidden), dtype, device, gen)
    gate_up = randn((experts, 2 * inter, hidden), dtype, device, gen, scale=max(hidden, 1) ** -0.5)
    down = randn((experts, hidden, inter), dtype, device, gen, scale=max(inter, 1) ** -0.5)
    ids = torch.rand((tokens, experts), generator=gen, device=device).argsort(-1)[:, :k].contiguous()  # (tokens, k)
    weights = torch.rand((tokens, k), generator=gen, device=device, dtype=accumulate_dtype(dtype)) + 0.25
    return (x, gate_up, down, weights / weights.sum(-1, keepdim=True), ids)


def check(args) -> None:
    x, gate_up, down, topk_weights, topk_ids = args
    checks.floating_tensor(NAME, "x", x, DTYPES)
    if x.dim() != 2:
        raise KforgeInputError(NAME, "x", f"must be 2-D (tokens, hidden), got shape {tuple(x.shape)}")
    tokens, hidden = x.shape
    for name, t in (("gate_up", gate_up), ("down", down)):
        checks.floating_tensor(NAME, name, t, DTYPES)
        checks.same_dtype(NAME, "x", x, name, t)
        checks.same_device(NAME, "x", x, name, t)
        if t.dim() != 3:
            raise KforgeInputError(NAME, name, f"must be 3-D (experts, ...), got shape {tuple(t.shape)}")
    experts, two_inter = gate_up.shape[0], gate_up.shape[1]
    if two_inter % 2 or gate_up.shape[2] != hidden:
        raise KforgeInputError(NAME, "gate_up", f"must be (experts, 2 * inter, hidden={hidden}), got shape "
                                                f"{tuple(gate_up.shape)}")
    if tuple(down.shape) != (experts, hidden, two_inter // 2):
        raise KforgeInputError(NAME, "down", f"must be (experts={experts}, hidden={hidden}, inter={two_inter // 2}) "
                                             f"to match gate_up, got shape {tuple(down.shape)}")
    checks.floating_tensor(NAME, "topk_weights", topk_weights, DTYPES)
    if topk_weights.dtype not in (torch.float32, x.dtype):
        raise KforgeInputError(NAME, "topk_weights", f"must be float32 or x's dtype {x.dtype}, got {topk_weights.dtype}")
    if not isinstance(topk_ids, torch.Tensor) or topk_ids.dtype not in ID_DTYPES:
        got = topk_ids.dtype if isinstance(topk_ids, torch.Tensor) else type(topk_ids).__name__
        raise KforgeInputError(NAME, "topk_ids", f"must be an int32 or int64 tensor, got {got}")
    for name, t in (("topk_weights", topk_weights), ("topk_ids", topk_ids)):
        checks.same_device(NAME, "x", x, name, t)
        if t.dim() != 2 or t.shape[0] != tokens:
            raise KforgeInputError(NAME, name, f"must be (tokens={tokens}, k), got shape {tuple(t.shape)}")
    if topk_ids.shape != topk_weights.shape:
        raise KforgeInputError(NAME, "topk_ids", f"must have topk_weights' shape {tuple(topk_weights.shape)}, got "
                                                 f"{tuple(topk_ids.shape)}")
    if topk_ids.shape[1] < 1 or experts < 1:
        raise KforgeInputError(NAME, "topk_ids", f"needs k >= 1 slots and experts >= 1, got k={topk_ids.shape[1]}, "
                                                 f"experts={experts}")


def check_values(args) -> None:
    checks.in_range(NAME, "topk_ids", args[4], args[1].shape[0], "gate_up's experts")


def problem(args):
    x, gate_up, down, topk_weights, topk_ids = args
    return (x.shape[0], x.shape[1], down.shape[2], gate_up.shape[0], topk_ids.shape[1])


def secret_shapes(public, rng, count: int) -> list:
    """Shapes near the public ones, never among them: widths moved off powers of two, the expert
    count moved by a little, k at most the experts (the general rule widens the last dim, k,
    past the experts there are)."""
    bases = sorted((s for s in public if all(d > 0 for d in s)), key=lambda s: (s[1], s))
    out: list = []
    for i in range(count if bases else 0):
        tokens, hidden, inter, experts, k = bases[-1] if i == 0 else rng.choice(bases)
        for _ in range(100):
            widths = [d + rng.randint(1, max(8, d // 8)) for d in (hidden, inter)]
            moved = max(1, experts + rng.randint(-1, 2))
            shape = (rng.randint(1, 2 * tokens + 3), *widths, moved, min(k, moved))
            if all(w & (w - 1) for w in widths) and shape not in public and shape not in out:
                out.append(shape)
                break
    return out


def tolerance(dtype, problem):
    tokens, hidden, inter, experts, k = problem
    floor = resolution_floor(dtype, hidden + inter, scale=0.25)  # y is ~N(0, 0.4^2) for make_inputs' inputs
    if dtype in (torch.float32, torch.float64):
        # Two chained GEMMs: a sum in another order than the oracle's errs ~sqrt(n) units of the
        # terms' size (~1 here), which at fp64 (the reference is the oracle: no error of its own to
        # scale the budget by) the floor alone must cover.
        return Tolerance(atol=torch.finfo(dtype).eps * math.sqrt(hidden + inter + 1), rtol=floor.rtol)
    return floor


def bytes_moved(problem, dtype) -> int:
    """Each expert hit reads its weights once (the expected count for uniform routing); x read and y
    written once; the intermediate written and read once."""
    tokens, hidden, inter, experts, k = problem
    size = torch.finfo(dtype).bits // 8
    hit = experts * (1.0 - (1.0 - min(k, experts) / max(experts, 1)) ** tokens) if tokens else 0.0
    return int(hit * 3 * inter * hidden * size) + 2 * tokens * hidden * size + 2 * tokens * k * inter * size


SPEC = OpSpec(
    name=NAME,
    schema="fused_moe(Tensor x, Tensor gate_up, Tensor down, Tensor topk_weights, Tensor topk_ids) -> Tensor",
    description="MoE experts with a SwiGLU gate: sum_j w[t,j] * down[e] @ (silu(g) * u), [g, u] = gate_up[e] @ x[t]",
    reference=reference,
    vendor=vendor,
    fake=fake,
    make_inputs=make_inputs,
    check=check,
    check_values=check_values,
    problem=problem,
    problem_dims=("tokens", "hidden", "inter", "experts", "k"),
    # A kernel's tiles follow the widths and the routing; only the token count may be served by the
    # nearest measured one.
    exact_dims=("hidden", "inter", "experts", "k"),
    dtypes=DTYPES,
    tolerance=tolerance,
    bytes_moved=bytes_moved,
    flops=lambda problem, dtype: 6 * problem[0] * problem[4] * problem[1] * problem[2],
    shape_sets={
        # (tokens, hidden, inter, experts, k)
        "smoke": ((4, 32, 48, 4, 2), (3, 64, 32, 8, 2)),
        "odd": ((5, 40, 24, 3, 2), (7, 33, 17, 5, 1), (1, 48, 40, 6, 3)),
        # No tokens; one expert; k == experts (every expert on every token).
        "edge": ((0, 32, 32, 4, 2), (2, 16, 16, 1, 1), (6, 16, 16, 2, 2)),
        # Mixtral 8x7B (4096, 14336, 8 experts, top 2), Qwen3-30B-A3B (2048, 768, 128, top 8),
        # Qwen1.5-MoE-A2.7B (2048, 1408, 60, top 4), a 1B-A400M MoE (1024, 512, 32, top 8: Granite 3's).
        "decode": ((1, 1024, 512, 32, 8), (1, 4096, 14336, 8, 2), (32, 4096, 14336, 8, 2), (1, 2048, 768, 128, 8),
                   (32, 2048, 768, 128, 8), (8, 2048, 1408, 60, 4)),
        "prefill": ((4096, 4096, 14336, 8, 2), (4096, 2048, 768, 128, 8), (2048, 2048, 1408, 60, 4)),
    },
    # The outputs are quadratic in x (silu(g) * u): x at 2^-5 moves them by 2^-10, x at 2^4 by 2^8.
    magnitudes=(Magnitude(2.0 ** -5, ("x",), output=2.0 ** -10), Magnitude(2.0 ** 4, ("x",), output=2.0 ** 8)),
    secret_shapes=secret_shapes,
    seed_kernels=("fused_moe_grouped.py",),
)
