"""Gated MLPs with a SiLU gate: `down(silu(gate(x)) * up(x))`.

- Phi-3's form already has one `gate_up_proj`: `down(silu_and_mul(gate_up_proj(x)))`.
- Llama's form has two projections. At patch time their weights are copied into one (2 * inter,
  hidden) buffer and the two Parameters' `.data` become its halves: the same Parameter objects
  (an optimizer built before keeps them), the same values and no extra memory, and a call makes
  one GEMM and one `silu_and_mul` instead of two GEMMs, a SiLU and a product. Should the halves stop
  sharing the buffer (`model.to(...)`, a new `.data`), the next call that can use it builds it again.
  `unpatch` gives each Parameter its own storage back (save a model after `unpatch`: serializers
  refuse tensors that share storage).
A call that needs a gradient or runs under torch.compile runs the module's own code (two GEMMs).
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from kforge import ops
from kforge.patching import probe
from kforge.patching.install import Candidate, mark, needs_grad


def _plain_linear(module) -> bool:
    return (isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward and module.bias is None
            and type(module.weight.data) is torch.Tensor)


def _activation(module: nn.Module):
    return getattr(module, "act_fn", None) or getattr(module, "activation_fn", None)


def _is_silu(act) -> bool:
    """SiLU by what it computes (nn.SiLU, HF's SiLUActivation, ...), not by its class."""
    if not callable(act):
        return False
    x = torch.linspace(-8.0, 8.0, 33)
    try:
        with torch.no_grad():
            return bool(torch.allclose(act(x), F.silu(x), rtol=1e-6, atol=1e-7))
    except Exception:  # noqa: BLE001 - an activation that cannot run on a CPU float tensor is not taken for SiLU
        return False


def matches(module: nn.Module) -> bool:
    if not _plain_linear(getattr(module, "down_proj", None)):
        return False
    if not _is_silu(_activation(module)):
        return False
    return _plain_linear(getattr(module, "gate_up_proj", None)) or (
        _plain_linear(getattr(module, "gate_proj", None)) and _plain_linear(getattr(module, "up_proj", None)))


def reason_left(module: nn.Module) -> str | None:
    """Why a module that looks like a gated MLP is not one kforge patches, or None."""
    act = _activation(module)
    if act is None or not hasattr(module, "down_proj"):
        return None
    if not _is_silu(act):
        return f"its gate is {type(act).__name__}, not SiLU (kforge's gate op is silu_and_mul)"
    names = ("gate_up_proj", "down_proj") if hasattr(module, "gate_up_proj") else ("gate_proj", "up_proj", "down_proj")
    odd = [n for n in names if not _plain_linear(getattr(module, n, None))]
    if odd:
        return (f"its {', '.join(odd)} {'is' if len(odd) == 1 else 'are'} not a plain bias-free nn.Linear "
                "(a bias, an adapter or a quantized layer)")
    return None


FUSED = "_kforge_fused"  # on a Llama-form module: [the (2 * inter, hidden) buffer, its halves' addresses]


def _build(self) -> torch.Tensor | None:
    g, u = self.gate_proj.weight, self.up_proj.weight
    if g.shape != u.shape or g.dtype != u.dtype or g.device != u.device:
        return None
    # Never an inference tensor (built inside torch.inference_mode it would become the Parameters'
    # .data, and a later backward through them would fail): a normal tensor, without autograd.
    with torch.inference_mode(False), torch.no_grad():
        return torch.cat((g.detach(), u.detach()))  # (2 * inter, hidden)


def _share(self, weight: torch.Tensor) -> None:
    inter = self.gate_proj.weight.shape[0]
    self.gate_proj.weight.data, self.up_proj.weight.data = weight[:inter], weight[inter:]
    setattr(self, FUSED, [weight, (weight.data_ptr(), weight[inter:].data_ptr())])


def _fused(self) -> torch.Tensor | None:
    """The shared buffer, built again if the Parameters no longer share it; None if they cannot."""
    state = vars(self).get(FUSED)
    if state is not None and state[0] is not None and (self.gate_proj.weight.data_ptr(),
                                                       self.up_proj.weight.data_ptr()) == state[1]:
        return state[0]
    weight = _build(self)
    if weight is not None:
        _share(self, weight)
    return weight


def undo(module: nn.Module) -> None:
    """Give the gate and up Parameters their own storage back."""
    vars(module).pop(ACT, None)
    if getattr(vars(module).get("_apply"), "func", None) is _release_then_apply:
        del module._apply
    state = vars(module).pop(FUSED, None)
    if state is not None and state[0] is not None and (module.gate_proj.weight.data_ptr(),
                                                       module.up_proj.weight.data_ptr()) == state[1]:
        module.gate_proj.weight.data = module.gate_proj.weight.data.clone()
        module.up_proj.weight.data = module.up_proj.weight.data.clone()


@mark
def merged_forward(self, hidden_states):
    if torch.compiler.is_compiling() or needs_grad(hidden_states, self.gate_up_proj.weight):
        return type(self).forward(self, hidden_states)
    return self.down_proj(ops.silu_and_mul(self.gate_up_proj(hidden_states)))


def _still_plain(self) -> bool:
    """The gate and up projections are still the plain, hook-free linears and the activation the
    SiLU the patch checked: an adapter (LoRA), a hook or another activation added since makes the
    module's own code run, so that they take effect."""
    gate, up = self.gate_proj, self.up_proj
    return (type(gate).forward is nn.Linear.forward and type(up).forward is nn.Linear.forward
            and gate.bias is None and up.bias is None and (_activation(self),) == vars(self).get(ACT)
            and not (gate._forward_hooks or gate._forward_pre_hooks or up._forward_hooks or up._forward_pre_hooks)
            and not (_global_hooks() or _global_pre_hooks()))


def _global_hooks():
    return torch.nn.modules.module._global_forward_hooks


def _global_pre_hooks():
    return torch.nn.modules.module._global_forward_pre_hooks


ACT = "_kforge_act"  # (the activation object the patch checked,)


@mark
def split_forward(self, hidden_states):
    trial = vars(self).get(TRIAL)
    if trial is not None:
        weight = trial
    elif (torch.compiler.is_compiling() or needs_grad(hidden_states, self.gate_proj.weight, self.up_proj.weight)
          or FUSED not in vars(self) or not _still_plain(self)):
        return type(self).forward(self, hidden_states)
    else:
        weight = _fused(self)
        if weight is None or weight.dtype != hidden_states.dtype:
            return type(self).forward(self, hidden_states)
    return self.down_proj(ops.silu_and_mul(F.linear(hidden_states, weight)))


TRIAL = "_kforge_trial"  # the buffer the probe runs on, before the Parameters share it


def _prepare(module: nn.Module) -> bool:
    module.__dict__[ACT] = (_activation(module),)  # in a tuple: an nn.Module attribute would become a child
    weight = _build(module)
    if weight is not None:
        setattr(module, TRIAL, weight)
    return weight is not None


def _install(module: nn.Module) -> None:
    _share(module, vars(module).pop(TRIAL))
    module._apply = functools.partial(_release_then_apply, module)


def _release_then_apply(self, fn, *args, **kwargs):
    """`model.to(...)` and the like: the shared buffer is dropped first, so the old copy (a CPU fp32
    one after `.to("cuda", torch.bfloat16)`) is freed with the Parameters' old data, not kept until
    the next forward builds the new one."""
    state = vars(self).get(FUSED)
    if state is not None:
        state[0], state[1] = None, (0, 0)
    return type(self)._apply(self, fn, *args, **kwargs)


def _discard(module: nn.Module) -> None:
    vars(module).pop(TRIAL, None)
    vars(module).pop(ACT, None)


def candidates(module: nn.Module) -> list[Candidate]:
    if hasattr(module, "gate_up_proj"):
        return [Candidate("silu_and_mul", "down(silu_and_mul(gate_up_proj(x)))", merged_forward)]
    return [Candidate("silu_and_mul", "gate and up weights in one buffer: one GEMM, then silu_and_mul",
                      split_forward, prepare=_prepare, install=_install, discard=_discard)]


def probe_inputs(module: nn.Module) -> tuple:
    weight = module.down_proj.weight  # (hidden, inter)
    return (probe.randn((3, weight.shape[0]), weight, seed=2),)
