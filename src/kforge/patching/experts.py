"""MoE experts stored as 3-D weights (transformers 5's `MixtralExperts`, `Qwen2MoeExperts`,
`Qwen3MoeExperts`: `gate_up_proj` (experts, 2 * inter, hidden), `down_proj` (experts, hidden,
inter), a SiLU gate), called as `experts(hidden_states, top_k_index, top_k_weights)`: kforge's
`fused_moe` in one call where HF loops over the experts hit (a one_hot, a nonzero and a host sync
per expert). A call that needs a gradient or runs under torch.compile runs the module's own code.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from kforge import ops
from kforge.patching import probe
from kforge.patching.install import Candidate, mark, needs_grad
from kforge.patching.mlp import _activation, _is_silu


def matches(module: nn.Module) -> bool:
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return (isinstance(gate_up, nn.Parameter) and isinstance(down, nn.Parameter) and gate_up.dim() == 3
            and down.dim() == 3 and _is_silu(_activation(module)))


@mark
def forward(self, hidden_states, top_k_index, top_k_weights):
    gate_up, down = self.gate_up_proj, self.down_proj
    if (torch.compiler.is_compiling() or hidden_states.dim() != 2 or hidden_states.dtype != gate_up.dtype
            or top_k_weights.dtype not in (torch.float32, hidden_states.dtype)
            or needs_grad(hidden_states, gate_up, down, top_k_weights)):
        return type(self).forward(self, hidden_states, top_k_index, top_k_weights)
    return ops.fused_moe(hidden_states, gate_up, down, top_k_weights, top_k_index)


def candidates(module: nn.Module) -> list[Candidate]:
    return [Candidate("fused_moe", "the experts in one fused_moe call (tokens grouped by expert)", forward)]


def probe_inputs(module: nn.Module) -> tuple:
    gate_up = module.gate_up_proj  # (experts, 2 * inter, hidden)
    experts, hidden = gate_up.shape[0], gate_up.shape[2]
    k = min(2, experts)
    gen = torch.Generator().manual_seed(7)
    ids = torch.rand((5, experts), generator=gen).argsort(-1)[:, :k].to(gate_up.device)  # (tokens, k)
    weights = torch.rand((5, k), generator=gen) + 0.25
    weights = (weights / weights.sum(-1, keepdim=True)).to(gate_up.device)
    return (probe.randn((5, hidden), gate_up, seed=8), ids, weights)
