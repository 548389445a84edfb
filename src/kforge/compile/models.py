"""The HF-style model blocks the compile patterns are written against, one place for the
torch.compile backend's tests and benchmarks/compile_backend.py (pure torch: nothing of kforge):
a Llama-style decoder (HF's LlamaRMSNorm, rotary embedding and residual layout, a fused gate/up
projection as Phi-3 and vLLM write it, grouped-query SDPA attention) and a Mixtral-style MoE block
(softmax router, top-k, renormalised weights; experts computed densely so the graph has static
shapes). Written from the papers' equations, no hub downloads; sizes are constructor arguments.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LlamaRMSNorm(nn.Module):
    """HF's LlamaRMSNorm: statistics in fp32, cast back before the weight."""

    def __init__(self, hidden: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class RotaryEmbedding(nn.Module):
    """HF's LlamaRotaryEmbedding (default rope type): cos and sin per position, in x's dtype."""

    def __init__(self, head_dim: int, base: float = 500000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor):
        inv_freq = self.inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1)  # (batch, dim/2, 1)
        positions = position_ids[:, None, :].float()  # (batch, 1, seq)
        freqs = (inv_freq @ positions).transpose(1, 2)  # (batch, seq, dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim: int = 1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.heads, self.head_dim).transpose(1, 2)  # (batch, heads, seq, dim)
        k = self.k_proj(x).view(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=seq > 1, enable_gqa=self.heads != self.kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, self.heads * self.head_dim))


class GatedMLP(nn.Module):
    """SwiGLU with one fused gate/up projection (Phi-3's gate_up_proj, vLLM's MergedColumnParallelLinear)."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden, 2 * intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(up * F.silu(gate))


class DecoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, intermediate: int, eps: float = 1e-5):
        super().__init__()
        self.self_attn = Attention(hidden, heads, kv_heads, hidden // heads)
        self.mlp = GatedMLP(hidden, intermediate)
        self.input_layernorm = LlamaRMSNorm(hidden, eps)
        self.post_attention_layernorm = LlamaRMSNorm(hidden, eps)

    def forward(self, hidden_states, cos, sin):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states = self.self_attn(hidden_states, cos, sin)
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = self.mlp(hidden_states)
        return residual + hidden_states


class LlamaBlocks(nn.Module):
    """`layers` decoder layers and the final norm (torch.nn.RMSNorm, the other spelling):
    (batch, seq, hidden) hidden states and (batch, seq) position ids -> (batch, seq, hidden)."""

    def __init__(self, hidden: int = 64, heads: int = 4, kv_heads: int = 2, intermediate: int = 128,
                 layers: int = 2, eps: float = 1e-5):
        super().__init__()
        self.rotary = RotaryEmbedding(hidden // heads)
        self.layers = nn.ModuleList(DecoderLayer(hidden, heads, kv_heads, intermediate, eps) for _ in range(layers))
        self.norm = nn.RMSNorm(hidden, eps=eps)

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        cos, sin = self.rotary(hidden_states, position_ids)
        for layer in self.layers:
            hidden_states = layer(hidden_states, cos, sin)
        return self.norm(hidden_states)


class MoEBlock(nn.Module):
    """Mixtral's sparse MoE block: softmax router in fp32, top-k, weights renormalised and cast
    back; SwiGLU experts over a fused gate/up weight, computed for every expert and combined with
    the routing weights (static shapes, so the whole block is one graph):
    (tokens, hidden) -> (tokens, hidden)."""

    def __init__(self, hidden: int = 64, experts: int = 8, top_k: int = 2, intermediate: int = 96):
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(hidden, experts, bias=False)
        self.w_gate_up = nn.Parameter(torch.randn(experts, 2 * intermediate, hidden) * hidden ** -0.5)
        self.w_down = nn.Parameter(torch.randn(experts, hidden, intermediate) * intermediate ** -0.5)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        router_logits = self.gate(hidden_states)  # (tokens, experts)
        routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
        routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
        routing_weights = routing_weights.to(hidden_states.dtype)
        dense = torch.zeros_like(router_logits).scatter(1, selected_experts, routing_weights)  # (tokens, experts)
        gate_up = torch.einsum("th,efh->tef", hidden_states, self.w_gate_up)  # (tokens, experts, 2 * inter)
        gate, up = gate_up.chunk(2, dim=-1)
        expert_out = torch.einsum("tei,ehi->teh", F.silu(gate) * up, self.w_down)  # (tokens, experts, hidden)
        return torch.einsum("te,teh->th", dense, expert_out)
