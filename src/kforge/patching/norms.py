"""RMSNorm modules: Hugging Face's two forms of one computation.

- Llama's (Mistral, Qwen2/3, Phi-3, Mixtral, Qwen-MoE): statistics in fp32, cast back to x's dtype,
  times the weight: kforge's `rms_norm(x, weight, eps)` when weight and x share a dtype (rounded
  once in fp32 where the eager code rounds twice).
- Gemma's (2 and 3): `norm(x.float()) * (1 + weight.float())`, rounded once: `rms_norm(x, 1 + weight,
  eps)` with the shifted weight in fp32 (rms_norm's contract computes in fp32 with a weight of
  any float dtype, so this is the eager result's one rounding), built on each call.
A call that needs a gradient, runs under torch.compile, or mixes dtypes runs the module's own code.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from kforge import ops
from kforge.patching import probe
from kforge.patching.install import Candidate, mark, needs_grad

EPS_ATTRS = ("variance_epsilon", "eps")  # Llama's name and Gemma's


def _eps(module: nn.Module) -> float | None:
    for attr in EPS_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, float):
            return value
    return None


def matches(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (type(module).__name__.endswith("RMSNorm") and isinstance(weight, nn.Parameter) and weight.dim() == 1
            and _eps(module) is not None)


@mark
def llama_forward(self, hidden_states):
    weight = self.weight
    if hidden_states.dtype != weight.dtype or torch.compiler.is_compiling() or needs_grad(hidden_states, weight):
        return type(self).forward(self, hidden_states)
    return ops.rms_norm(hidden_states, weight, _eps(self))


@mark
def gemma_forward(self, hidden_states):
    weight = self.weight
    if not hidden_states.is_floating_point() or torch.compiler.is_compiling() or needs_grad(hidden_states, weight):
        return type(self).forward(self, hidden_states)
    acc = torch.float64 if hidden_states.dtype == torch.float64 else torch.float32
    # Built on every call (one vector of `hidden`): a cache keyed on the weight's version would miss
    # writes through .data (an EMA's copy_), which do not move it.
    return ops.rms_norm(hidden_states, 1.0 + weight.detach().to(acc), _eps(self))


def candidates(module: nn.Module) -> list[Candidate]:
    """Replacements to probe, the likely one first."""
    return [Candidate("rms_norm", "x * rsqrt(mean(x^2) + eps) * weight, rounded once", llama_forward),
            Candidate("rms_norm", "Gemma's form: the weight shifted by 1, in fp32", gemma_forward)]


def probe_inputs(module: nn.Module) -> tuple:
    """Rows at unit scale, at sqrt(eps) (where eps is as large as the mean square: a norm that reads
    another eps than kforge passes differs there), and a zero row."""
    weight, eps = module.weight, _eps(module) or 1e-6
    rows = torch.cat((probe.randn((3, weight.shape[0]), weight, seed=1).float(),
                      probe.randn((2, weight.shape[0]), weight, seed=2, scale=eps ** 0.5).float(),
                      torch.zeros((1, weight.shape[0]), device=weight.device)))
    return (rows.to(weight.dtype),)


def reason_left(module: nn.Module) -> str | None:
    """Why an `...RMSNorm` module is not one kforge patches, or None."""
    if type(module).__name__.endswith("RMSNorm") and not matches(module):
        return (f"it has no 1-D weight Parameter or no float eps attribute ({' / '.join(EPS_ATTRS)}) kforge can "
                "read")
    return None
