"""Tiny Hugging Face models of the classes kforge.patch supports (real transformers classes built
from configs, random weights), and what the patch tests share."""
from __future__ import annotations

import gc

import torch
from transformers import AutoConfig, AutoModelForCausalLM

import kforge
from kforge.patching import rotary

COMMON = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=128, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=1)
EXTRA = {  # model_type -> its own config on top of COMMON
    "llama": {}, "mistral": {}, "qwen2": {}, "qwen3": {"head_dim": 16}, "gemma2": {"head_dim": 16},
    "gemma3_text": {"head_dim": 16}, "phi3": {}, "mixtral": {"num_local_experts": 4},
    "qwen2_moe": {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                  "shared_expert_intermediate_size": 48},
    "qwen3_moe": {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "head_dim": 16},
}


def tiny(model_type: str, dtype=torch.float32, seed: int = 0, **extra):
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **COMMON, **EXTRA[model_type], **extra)
    return AutoModelForCausalLM.from_config(config).to(dtype).eval()


def ids(batch=2, seq=7, seed=1):
    return torch.randint(2, 128, (batch, seq), generator=torch.Generator().manual_seed(seed))


def calls() -> dict:
    return {op: s["calls"] for op, s in kforge.stats()["ops"].items()}


def release_rotary() -> None:
    """Models patched by earlier tests and never unpatched release the rotary function when
    collected; one a failed test's traceback still holds is released here."""
    if rotary._ACTIVE:
        gc.collect()
    for _, (_, _, models) in list(rotary._ACTIVE.items()):
        for finalizer in list(models.values()):
            finalizer()
    assert not rotary._ACTIVE


def assert_patched_matches_own(model, x) -> None:
    """`model`'s logits on `x` while patched and after `kforge.unpatch` agree."""
    with torch.no_grad():
        got = model(x).logits
    kforge.unpatch(model)
    with torch.no_grad():
        expected = model(x).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
