"""MoE routers (Mixtral's, Qwen2-MoE's and Qwen3-MoE's `...TopKRouter`): logits = x @ weight.T, a
softmax in fp32, the top k, renormalised or not, returned as (logits, scores, indices). kforge's
`topk_softmax(logits, k, renormalize)` does the softmax and the top k in one pass; which of
renormalising and casting the scores back to the logits' dtype a router does is found by the probe,
not assumed from its class (Mixtral always renormalises and keeps fp32; Qwen's follow
`norm_topk_prob` and cast). Indices come back int64, as the experts' one_hot needs them.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kforge import ops
from kforge.patching import probe
from kforge.patching.install import Candidate, needs_grad


def matches(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (type(module).__name__.endswith("Router") and isinstance(weight, nn.Parameter) and weight.dim() == 2
            and isinstance(getattr(module, "top_k", None), int) and getattr(module, "bias", None) is None)


class _Form:
    """One router form's forward (module-level, so a patched model pickles): renormalised or not,
    scores cast to the logits' dtype or kept fp32."""

    kforge_patch = True  # install.MARK

    def __init__(self, renormalize: bool, cast: bool):
        self.renormalize, self.cast = renormalize, cast

    def __call__(self, module, hidden_states):
        weight = module.weight
        if hidden_states.dtype != weight.dtype or torch.compiler.is_compiling() or needs_grad(hidden_states, weight):
            return type(module).forward(module, hidden_states)
        logits = F.linear(hidden_states.reshape(-1, weight.shape[1]), weight)  # (tokens, experts)
        scores, indices = ops.topk_softmax(logits, module.top_k, self.renormalize)
        return logits, scores.to(logits.dtype) if self.cast else scores, indices.long()


_FORMS = {(r, c): _Form(r, c) for r in (True, False) for c in (False, True)}


def candidates(module: nn.Module) -> list[Candidate]:
    said = getattr(module, "norm_topk_prob", None)
    orders = (bool(said), not said) if isinstance(said, bool) else (True, False)
    out = []
    for renormalize in orders:
        for cast in (False, True):
            how = ("renormalised" if renormalize else "not renormalised") + (
                ", scores cast to the logits' dtype" if cast else ", fp32 scores")
            out.append(Candidate("topk_softmax", f"softmax and top-k in one pass ({how})", _FORMS[renormalize, cast],
                                 compare=_same_routing))
    return out


def _same_routing(new, expected) -> str | None:
    """Logits and scores within the probe's units; the experts chosen may differ only between
    experts of equal probability (ties, common in bf16 logits), where either choice is the top k."""
    if not isinstance(new, tuple) or len(new) != 3:
        return probe.disagreement(new, expected)
    reason = probe.disagreement(new[:2], expected[:2])
    if reason is not None or new[2].dtype != expected[2].dtype or new[2].shape != expected[2].shape:
        return reason or probe.disagreement(new[2], expected[2])
    probs = torch.softmax(expected[0].double(), -1)  # (tokens, experts)
    picked_new = probs.gather(-1, new[2]).sort(-1).values
    picked_old = probs.gather(-1, expected[2]).sort(-1).values
    return probe.disagreement(picked_new, picked_old) and "it chooses other experts than the model's router"


def probe_inputs(module: nn.Module) -> tuple:
    weight = module.weight  # (experts, hidden)
    return (probe.randn((5, weight.shape[1]), weight, seed=3),)
