"""Rotary position embedding: the `apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)` function
of a model's modeling module (q: (batch, heads, seq, head_dim), cos/sin: (batch, seq, rot_dim)).

Hugging Face calls it as a module global, so the patch replaces that global, process-wide for the
modeling module while any model of it is patched (the last `unpatch` restores it); the replacement
runs the module's own function for every call it does not cover. Covered: rotate-half pairs (the
halves of cos and sin equal, as every HF rope type builds them: checked on the model's rotary
module at patch time), a partial rot_dim passed through past its end (Phi-3's form), 4-D q and k.
One `rotary_embedding` call replaces about ten eager ops; the (tokens, rot_dim) cos/sin cache it
reads is built once per forward (the layers share one cos and one sin) and kept until the next.
"""
from __future__ import annotations

import inspect
import sys
import weakref

import torch
import torch.nn as nn

from kforge import ops
from kforge.patching import probe
from kforge.patching.report import Entry

NAME = "apply_rotary_pos_emb"
# modeling module name -> (the global replaced or holding the replacement, replacement, {id(model): finalizer} of the models
# patched): the last model out, by unpatch or by being collected, restores the original.
_ACTIVE: dict[str, tuple] = {}


def modeling_modules(model: nn.Module) -> list[str]:
    """The modules defining `model`'s attention classes that call a rotary function of their own."""
    names = []
    for module in model.modules():
        name = type(module).__module__
        if type(module).__name__.endswith("Attention") and name not in names and callable(
                getattr(sys.modules.get(name), NAME, None)):
            names.append(name)
    return names


def make(original):
    params = list(inspect.signature(original).parameters)
    fifth_is_unsqueeze = len(params) > 4 and params[4] == "unsqueeze_dim"
    is_compiling = torch.compiler.is_compiling
    last: list = [None]  # (cos, sin, (batch, versions), cache, positions) of the latest call: the next layer's

    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        if args or kwargs:
            given = args[0] if args else kwargs.get("unsqueeze_dim")
            if len(args) + len(kwargs) != 1 or given != 1 or (args and not fifth_is_unsqueeze):
                return original(q, k, cos, sin, *args, **kwargs)
        if (is_compiling() or q.dim() != 4 or k.dim() != 4 or cos.dim() != 3 or not q.dtype == k.dtype == cos.dtype
                == sin.dtype or (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad))):
            return original(q, k, cos, sin, *args, **kwargs)
        batch, heads, seq, head_dim = q.shape
        kv_heads, rot_dim = k.shape[1], cos.shape[-1]
        if (k.shape[0] != batch or k.shape[2:] != q.shape[2:] or rot_dim % 2 or rot_dim > head_dim
                or cos.shape[1] != seq or cos.shape[0] not in (1, batch) or sin.shape != cos.shape):
            return original(q, k, cos, sin, *args, **kwargs)
        entry = last[0]
        # cos/sin written in place since: build again (inference tensors have no version counter;
        # HF makes cos/sin anew each forward)
        versions = None if cos.is_inference() or sin.is_inference() else (cos._version, sin._version)
        if entry is not None and entry[0] is cos and entry[1] is sin and entry[2] == (batch, versions):
            cache, positions = entry[3], entry[4]
        else:
            half = rot_dim // 2
            cache = torch.cat((cos[..., :half], sin[..., :half]), -1).expand(batch, seq, rot_dim)
            cache = cache.reshape(batch * seq, rot_dim)  # (tokens, rot_dim): token t's cos | sin
            positions = torch.arange(batch * seq, device=q.device)
            last[0] = (cos, sin, (batch, versions), cache, positions)
        query = q.transpose(1, 2).reshape(batch * seq, heads, head_dim)  # a view for HF's (b, s, h, d) layout
        key = k.transpose(1, 2).reshape(batch * seq, kv_heads, head_dim)
        q_out, k_out = ops.rotary_embedding(query, key, positions, cache, True)
        return (q_out.view(batch, seq, heads, head_dim).transpose(1, 2),
                k_out.view(batch, seq, kv_heads, head_dim).transpose(1, 2))

    apply_rotary_pos_emb.kforge_original = original
    return apply_rotary_pos_emb


def _cos_sin(model: nn.Module, dtype: torch.dtype, device) -> tuple | str:
    """(cos, sin) of the model's first rotary module for 2 x 6 positions, or why there is none."""
    rotary = next((m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")), None)
    if rotary is None:
        return "the model has no ...RotaryEmbedding module to check its cos/sin layout"
    x = torch.zeros((2, 6, 1), dtype=dtype, device=device)
    positions = torch.arange(6, device=device).expand(2, 6)
    config = getattr(model, "config", None)
    layer_types = sorted(set(getattr(getattr(config, "text_config", config), "layer_types", None) or ()))
    with torch.no_grad():
        for extra in [()] + [(t,) for t in layer_types]:
            try:
                cos, sin = rotary(x, positions, *extra)
                break
            except (TypeError, KeyError, ValueError):
                continue
        else:
            return f"its rotary module ({type(rotary).__name__}) could not be called as (x, position_ids)"
    half = cos.shape[-1] // 2
    if cos.shape[-1] % 2 or not (torch.equal(cos[..., :half], cos[..., half:]) and torch.equal(sin[..., :half], sin[..., half:])):
        return "its cos/sin halves differ (not the rotate-half layout rotary_embedding computes)"
    return cos, sin


def patch(model: nn.Module, name: str, dtype: torch.dtype, device) -> Entry:
    """Replace the rotary function of modeling module `name` (for `model`; process-wide)."""
    where = f"{name}.{NAME}"
    module = sys.modules[name]
    if name not in _ACTIVE:
        found = _cos_sin(model, dtype, device)
        if isinstance(found, str):
            return Entry("rotary", where, "", found)
        cos, sin = found
        holder = getattr(module, NAME)
        # With the `kernels` package (a dependency of transformers 5.2x), the global is a Func
        # nn.Module wrapping the function: its forward is replaced on that object, so the global
        # stays the object kernels and pickles of models refer to.
        original = type(holder).forward.__get__(holder) if isinstance(holder, nn.Module) else holder
        replacement = make(original)
        head_dim = next((int(m.head_dim) for m in model.modules() if isinstance(getattr(m, "head_dim", None), int)),
                        cos.shape[-1])
        q = probe.randn((2, 6, 3, head_dim), cos, seed=4).transpose(1, 2)  # (batch, heads, seq, head_dim), HF's layout
        k = probe.randn((2, 6, 1, head_dim), cos, seed=5).transpose(1, 2)
        with torch.no_grad():
            try:
                reason = probe.disagreement(replacement(q, k, cos, sin), original(q, k, cos, sin))
            except Exception as err:  # noqa: BLE001 - a function kforge cannot run is one it leaves
                reason = f"raised {type(err).__name__}: {err}"
        if reason is not None:
            return Entry("rotary", where, "", f"its output is not kforge's rotary_embedding: {reason}")
        if isinstance(holder, nn.Module):
            holder.forward = replacement
        else:
            setattr(module, NAME, replacement)
        _ACTIVE[name] = (holder, replacement, {})
    models = _ACTIVE[name][2]
    if id(model) not in models:
        models[id(model)] = weakref.finalize(model, _release, name, id(model))
    note = "one call a layer (the modeling module's function, process-wide)"
    return Entry("rotary", where, "rotary_embedding", note)


def unpatch(model: nn.Module, name: str) -> None:
    """`model` no longer needs the rotary function of `name`; the last model out restores it."""
    active = _ACTIVE.get(name)
    finalizer = active[2].get(id(model)) if active else None
    if finalizer is not None:
        finalizer.detach()
        _release(name, id(model))


def _release(name: str, key: int) -> None:
    active = _ACTIVE.get(name)
    if active is None:
        return
    holder, replacement, models = active
    models.pop(key, None)
    if not models:
        module = sys.modules.get(name)
        if isinstance(holder, nn.Module):
            if vars(holder).get("forward") is replacement:
                del holder.forward
        elif module is not None and getattr(module, NAME, None) is replacement:
            setattr(module, NAME, holder)
        del _ACTIVE[name]
