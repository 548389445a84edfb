"""A model's forward as the calls of kforge's built-in ops, at given token counts.

Each op's problems (what its `spec.problem(args)` gives, the dispatch key's shape) are derived
from the model's config here; `keys` maps each through the spec's own `shape_for` to the shape its
`make_inputs` takes. A token count up to the data file's largest decode count (64) is a decode
step, a larger one a prefill. Per op, at t tokens:

  rms_norm            (t, hidden) for RMSNorm models; MLA's latent norms (t, kv_lora_rank) and
                      (t, q_lora_rank); the per-head q/k norm (t * heads, head_dim) and
                      (t * kv_heads, head_dim) where the model has one (Qwen3, Gemma 3)
  fused_add_rms_norm  (t, hidden): the residual add before each norm of an RMSNorm model
  layer_norm          (t, hidden) for LayerNorm models
  silu_and_mul        (rows, d) for SwiGLU MLPs: (t, intermediate) for dense layers,
                      (t * top_k, moe_intermediate) for routed experts (each token's k copies, as
                      a fused MoE runs them), (t, shared_intermediate) for shared experts
  gemv                decode only, (t, n, k) per linear layer: fused qkv (MLA: its q, q_a, q_b,
                      kv_a, kv_b), o, the dense and shared MLPs, the router, the LM head; routed
                      experts' gate_up and down at t = 1 only (at more tokens an expert's rows
                      depend on the routing)
  rotary_embedding    (t, heads, kv_heads, head_dim, rotary_dim, is_neox); MLA: (t, heads, 1,
                      qk_rope_head_dim, ...), its key's RoPE part being one head shared by all
  softmax             decode only, (t, vocab): sampling's probabilities
  topk_softmax        (t, experts, top_k, renormalize) for softmax routers
  fused_moe           (t, hidden, moe_intermediate, experts, top_k) for SwiGLU routed experts
  cross_entropy       prefill only, (t, vocab): the training or evaluation loss

A call the op's `make_inputs` cannot build (it derives rotary_embedding's layout from the head
size and topk_softmax's k from the expert count, as the real models it knows have them) is left
out and named by `gaps`; so is a call no kforge op computes (DeepSeek-V3's sigmoid router).
"""
from __future__ import annotations

from typing import Callable, Iterable, NamedTuple, Sequence

import torch

from kforge.errors import KforgeError, UnknownNameError
from kforge.shapes.models import Mlp, Model, Norm, Scoring
from kforge.specs import OpSpec, Problem, Shape
from kforge.specs import cross_entropy, fused_add_rms_norm, fused_moe, gemv, layer_norm, rms_norm, rotary_embedding
from kforge.specs import silu_and_mul
from kforge.specs import softmax, topk_softmax

BUILTIN_SPECS: dict[str, OpSpec] = {s.SPEC.name: s.SPEC for s in (
    rms_norm, fused_add_rms_norm, layer_norm, softmax, silu_and_mul, gemv, rotary_embedding, topk_softmax, cross_entropy,
    fused_moe)}


class Key(NamedTuple):
    """One call of an op: the shape its `make_inputs` takes, and the primary input's dtype."""

    shape: Shape
    dtype: torch.dtype


def projections(m: Model) -> list[tuple[str, int, int]]:
    """(name, n, k) of every linear layer's weight (n, k) a token passes through, routed experts
    excluded (see `expert_projections`)."""
    hidden, heads = m.hidden_size, m.num_attention_heads
    out = []
    if m.mla is None:
        out.append(("qkv", (heads + 2 * m.num_key_value_heads) * m.head_dim, hidden))
        out.append(("o", hidden, heads * m.head_dim))
    else:
        a = m.mla
        if a.q_lora_rank is None:
            out.append(("q", heads * m.head_dim, hidden))
        else:
            out += [("q_a", a.q_lora_rank, hidden), ("q_b", heads * m.head_dim, a.q_lora_rank)]
        out += [("kv_a", a.kv_lora_rank + a.qk_rope_head_dim, hidden),
                ("kv_b", heads * (a.qk_nope_head_dim + a.v_head_dim), a.kv_lora_rank),
                ("o", hidden, heads * a.v_head_dim)]
    gated = 2 if m.mlp in (Mlp.SWIGLU, Mlp.GEGLU) else 1
    if m.moe is None or m.moe.first_k_dense_replace:
        out += [("gate_up" if gated == 2 else "up", gated * m.intermediate_size, hidden),
                ("down", hidden, m.intermediate_size)]
    if m.moe is not None:
        out.append(("router", m.moe.num_experts, hidden))
        shared = m.moe.shared_expert_intermediate_size
        if shared:
            out += [("shared_gate_up", gated * shared, hidden), ("shared_down", hidden, shared)]
    out.append(("lm_head", m.vocab_size, hidden))
    return out


def expert_projections(m: Model) -> list[tuple[str, int, int]]:
    """(name, n, k) of one routed expert's weights; none for a dense model."""
    if m.moe is None:
        return []
    gated = 2 if m.mlp in (Mlp.SWIGLU, Mlp.GEGLU) else 1
    size = m.moe.moe_intermediate_size
    return [("expert_gate_up", gated * size, m.hidden_size), ("expert_down", m.hidden_size, size)]


def _rms_norm(m: Model, t: int) -> list[Problem]:
    out = [(t, m.hidden_size)] if m.norm is Norm.RMS else []
    if m.mla is not None:
        out += [(t, m.mla.kv_lora_rank)] + ([(t, m.mla.q_lora_rank)] if m.mla.q_lora_rank else [])
    if m.qk_norm:
        out += [(t * m.num_attention_heads, m.head_dim), (t * m.num_key_value_heads, m.head_dim)]
    return out


def _silu_and_mul(m: Model, t: int) -> list[Problem]:
    if m.mlp is not Mlp.SWIGLU:
        return []
    if m.moe is None:
        return [(t, m.intermediate_size)]
    out = [(t, m.intermediate_size)] if m.moe.first_k_dense_replace else []
    out.append((t * m.moe.num_experts_per_tok, m.moe.moe_intermediate_size))
    shared = m.moe.shared_expert_intermediate_size
    return out + ([(t, shared)] if shared else [])


def _gemv(m: Model, t: int) -> list[Problem]:
    layers = projections(m) + (expert_projections(m) if t == 1 else [])
    return [(t, n, k) for _, n, k in layers]


def rotary_problem(m: Model, t: int) -> Problem:
    """The model's own rotary_embedding problem at t tokens (buildable or not: see `gaps`)."""
    if m.mla is None:
        heads, kv_heads, head = m.num_attention_heads, m.num_key_value_heads, m.head_dim
    else:
        heads, kv_heads, head = m.num_attention_heads, 1, m.mla.qk_rope_head_dim
    return (t, heads, kv_heads, head, m.rotary_dim, int(not m.rope_interleaved))


def _rotary_gap(m: Model) -> str | None:
    _, _, _, head, rot_dim, is_neox = rotary_problem(m, 1)
    built_rot, built_neox, _ = rotary_embedding.rope_config(head)
    if (built_rot, int(built_neox)) == (rot_dim, is_neox):
        return None
    def layout(rot: int, neox: int) -> str:
        return f"rot_dim {rot} {'neox' if neox else 'interleaved'}"

    return (f"rotary_embedding: head_size {head} with {layout(rot_dim, is_neox)}; its make_inputs builds "
            f"{layout(built_rot, built_neox)} for that head size (rotary_embedding.rope_config)")


def _topk_gap(m: Model) -> str | None:
    if m.moe is None:
        return None
    if m.moe.scoring_func is not Scoring.SOFTMAX:
        return f"topk_softmax: the router scores experts by {m.moe.scoring_func.value}, not a softmax: no kforge op"
    k, renormalize = topk_softmax.routing(m.moe.num_experts)
    if (k, renormalize) != (m.moe.num_experts_per_tok, m.moe.norm_topk_prob):
        return (f"topk_softmax: {m.moe.num_experts} experts top {m.moe.num_experts_per_tok} renormalize "
                f"{m.moe.norm_topk_prob}; its make_inputs builds top {k} renormalize {renormalize} for that "
                "expert count (topk_softmax.routing)")
    return None


def _rotary(m: Model, t: int) -> list[Problem]:
    return [] if _rotary_gap(m) else [rotary_problem(m, t)]


def _topk(m: Model, t: int) -> list[Problem]:
    if m.moe is None or _topk_gap(m):
        return []
    return [(t, m.moe.num_experts, m.moe.num_experts_per_tok, int(m.moe.norm_topk_prob))]


DECODE, PREFILL, ALL = "decode", "prefill", "all"
# op -> (the phase it runs in, its problems at t tokens)
RULES: dict[str, tuple[str, Callable[[Model, int], list[Problem]]]] = {
    "rms_norm": (ALL, _rms_norm),
    "fused_add_rms_norm": (ALL, lambda m, t: [(t, m.hidden_size)] if m.norm is Norm.RMS else []),
    "layer_norm": (ALL, lambda m, t: [(t, m.hidden_size)] if m.norm is Norm.LAYER else []),
    "silu_and_mul": (ALL, _silu_and_mul),
    "gemv": (DECODE, _gemv),
    "rotary_embedding": (ALL, _rotary),
    "softmax": (DECODE, lambda m, t: [(t, m.vocab_size)]),
    "topk_softmax": (ALL, _topk),
    "cross_entropy": (PREFILL, lambda m, t: [(t, m.vocab_size)]),
    "fused_moe": (ALL, lambda m, t: [(t, m.hidden_size, m.moe.moe_intermediate_size, m.moe.num_experts,
                                      m.moe.num_experts_per_tok)] if m.moe is not None and m.mlp is Mlp.SWIGLU else []),
}

def gaps(m: Model) -> list[str]:
    """The calls of `m`'s forward that `problems` leaves out, each with why."""
    return [g for g in (_rotary_gap(m), _topk_gap(m)) if g]


def check_tokens(tokens: Iterable[int]) -> tuple[int, ...]:
    out = tuple(tokens)
    if not out or any(isinstance(t, bool) or not isinstance(t, int) or t <= 0 for t in out):
        raise KforgeError(f"token counts must be positive integers, got {list(out)[:20]}")
    return tuple(dict.fromkeys(out))


def check_ops(ops: Sequence[str] | None) -> tuple[str, ...]:
    if ops is None:
        return tuple(RULES)
    for op in ops:
        if op not in RULES:
            raise UnknownNameError("built-in op", op, RULES)
    return tuple(dict.fromkeys(ops))


def problems_of(m: Model, tokens: Sequence[int], ops: Sequence[str], decode_max: int) -> dict[str, list[Problem]]:
    """Per op of `ops`, `m`'s problems at `tokens` (checked), in token order without repeats; ops
    with none are left out."""
    out: dict[str, list[Problem]] = {}
    for op in ops:
        phase, rule = RULES[op]
        found: dict[Problem, None] = {}
        for t in tokens:
            if phase == ALL or (phase == DECODE) == (t <= decode_max):
                found.update(dict.fromkeys(tuple(p) for p in rule(m, t)))
        if found:
            out[op] = list(found)
    return out


def keys_of(problems: dict[str, list[Problem]], dtype: torch.dtype) -> dict[str, list[Key]]:
    """The problems as keys: each op's spec maps a problem to the shape its make_inputs takes."""
    out = {}
    for op, found in problems.items():
        spec = BUILTIN_SPECS[op]
        if dtype not in spec.dtypes:
            raise KforgeError(f"{op} takes {', '.join(str(d).removeprefix('torch.') for d in spec.dtypes)}, not {dtype}")
        out[op] = list(dict.fromkeys(Key(tuple(spec.shape_for(p)), dtype) for p in found))
    return out
