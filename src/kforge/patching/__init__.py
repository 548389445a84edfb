"""`kforge.patch(model)`: an eager Hugging Face model's RMSNorms, SiLU-gated MLPs, rotary
embedding, MoE routers and causal-LM loss served by kforge's ops, each replacement checked against
the model's own code before it is installed; `kforge.unpatch(model)` restores the model.

    report = kforge.patch(model)    # a PatchReport: what was patched, what was left and why
    print(report)
    kforge.unpatch(model)

Patched by model class (`config.model_type`): those in SUPPORTED. Any other model is left
untouched, with one warning that says so. What is patched (see each module for the details):
- norm: every `...RMSNorm` module, Llama's form and Gemma's `1 + weight` (`norms`);
- mlp: SiLU-gated MLPs, Phi-3's `gate_up_proj` and Llama's gate/up pair (one shared buffer) (`mlp`);
- rotary: the modeling module's `apply_rotary_pos_emb`, process-wide while patched (`rotary`);
- experts: MoE experts kept as 3-D weights: one `fused_moe` call for the whole layer (`experts`);
- router: MoE `...Router` modules: softmax and top-k in one `topk_softmax` (`router`);
- loss: a causal LM's `loss_function` (`loss`).
A module is patched only if its replacement agrees with its own forward on a probe input (`probe`),
so a class that looks like one of these but computes something else is left, with the difference.
Replacements take the kforge op only for calls without a gradient (inference: `torch.no_grad()` or
`torch.inference_mode()`) outside torch.compile; other calls run the model's own code (backward
kernels are not registered yet, and under torch.compile the kforge backend does the rewriting).
"""
from __future__ import annotations

import warnings
from typing import Iterable

import torch.nn as nn

from kforge.errors import KforgeInputError
from kforge.patching import experts, install, loss, mlp, norms, rotary, router
from kforge.patching.report import Entry, PatchReport
from kforge.router import misses

SUPPORTED = {
    "llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma2": "Gemma 2",
    "gemma3": "Gemma 3", "gemma3_text": "Gemma 3 (text)", "phi3": "Phi-3", "mixtral": "Mixtral",
    "qwen2_moe": "Qwen2-MoE", "qwen3_moe": "Qwen3-MoE",
}
KINDS = ("norm", "mlp", "experts", "rotary", "router", "loss")
STATE = "_kforge_patch"  # on a patched model: its PatchReport (unpatch reads where each replacement is)


class KforgePatchWarning(UserWarning):
    """A model `kforge.patch` leaves untouched as a whole."""


def patch(model: nn.Module, *, kinds: Iterable[str] | None = None) -> PatchReport:
    """Patch `model` in place (see the module docstring) and return what was done.

    kinds: a subset of KINDS to patch (default all). A model already patched is returned its
    report unchanged; `unpatch` first to patch it again with other kinds."""
    if not isinstance(model, nn.Module):
        raise KforgeInputError("patch", "model", f"must be a torch.nn.Module, got {type(model).__name__}")
    chosen = _kinds(kinds)
    config = getattr(model, "config", None)
    report = PatchReport(type(model).__name__, str(getattr(config, "model_type", "") or ""))
    if isinstance(vars(model).get(STATE), PatchReport):
        return vars(model)[STATE]
    if report.model_type not in SUPPORTED:
        known = ", ".join(sorted(SUPPORTED))
        what = f"model_type {report.model_type!r}" if report.model_type else "no Hugging Face config"
        report.message = f"left untouched: {report.model} has {what}; kforge.patch knows {known}"
        warnings.warn(f"kforge.patch: {report.message}", KforgePatchWarning, stacklevel=2)
        return report
    floating = [p for p in model.parameters() if p.is_floating_point()]
    if not floating or any(p.device.type == "meta" for p in floating):
        report.message = "left untouched: its weights are not loaded (no parameters, or on the meta device)"
        warnings.warn(f"kforge.patch: {report.message}", KforgePatchWarning, stacklevel=2)
        return report
    entries = []
    with misses.uncounted():  # the probes' calls are kforge's own, not the user's: never logged as misses
        for where, module in model.named_modules():
            entries.append(_module_entry(where, module, chosen))
        if "rotary" in chosen:
            entries += [rotary.patch(model, name, floating[0].dtype, floating[0].device)
                        for name in rotary.modeling_modules(model)]
        if "loss" in chosen and type(model).__name__.endswith("ForCausalLM"):
            entries.append(loss.patch(model))
    for entry in filter(None, entries):
        (report.patched if entry.op else report.left).append(entry)
    setattr(model, STATE, report)
    return report


def unpatch(model: nn.Module) -> PatchReport | None:
    """Restore what `patch` replaced in `model`: the modules' own forwards, the gate and up weights'
    own storage, the rotary function (once no patched model uses it) and the loss. Returns the
    report of the patch undone, None when `model` was not patched. A module since removed from
    the model is skipped; one whose forward was wrapped after the patch (and so cannot be
    restored here) is named in a warning and in the report's `left`."""
    if not isinstance(model, nn.Module):
        raise KforgeInputError("unpatch", "model", f"must be a torch.nn.Module, got {type(model).__name__}")
    report = vars(model).get(STATE)
    if not isinstance(report, PatchReport):
        return None
    stuck = []
    for entry in report.patched:
        if entry.kind == "rotary":
            rotary.unpatch(model, entry.where.rsplit(".", 1)[0])
        elif entry.kind == "loss":
            loss.unpatch(model)
        else:
            try:
                module = model.get_submodule(entry.where)
            except AttributeError:
                continue  # pruned since: nothing of kforge's is left in the model there
            if not install.restore_forward(module):
                stuck.append(entry)
            if entry.kind == "mlp":
                mlp.undo(module)
    del model.__dict__[STATE]
    if stuck:
        report.left.extend(Entry(e.kind, e.where, "", "unpatch could not restore it: its forward was wrapped after "
                                                      "the patch (remove that wrapper first)") for e in stuck)
        warnings.warn(f"kforge.unpatch: {len(stuck)} module(s) kept kforge's forward under a wrapper added after "
                      f"the patch, e.g. {stuck[0].where}", KforgePatchWarning, stacklevel=2)
    return report


def _kinds(kinds) -> tuple[str, ...]:
    if kinds is None:
        return KINDS
    chosen = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    unknown = [k for k in chosen if k not in KINDS]
    if unknown:
        raise KforgeInputError("patch", "kinds", f"unknown kind(s) {unknown}; known: {', '.join(KINDS)}")
    return chosen


def _module_entry(where: str, module: nn.Module, chosen) -> Entry | None:
    if "norm" in chosen and norms.matches(module):
        return install.replace_forward("norm", where, module, norms.candidates(module), norms.probe_inputs(module))
    if "mlp" in chosen and mlp.matches(module):
        return install.replace_forward("mlp", where, module, mlp.candidates(module), mlp.probe_inputs(module))
    if "experts" in chosen and experts.matches(module):
        return install.replace_forward("experts", where, module, experts.candidates(module),
                                       experts.probe_inputs(module))
    if "mlp" in chosen and (reason := mlp.reason_left(module)):
        return Entry("mlp", where, "", reason)
    if "norm" in chosen and (reason := norms.reason_left(module)):
        return Entry("norm", where, "", reason)
    if "router" in chosen and router.matches(module):
        return install.replace_forward("router", where, module, router.candidates(module), router.probe_inputs(module))
    return None


__all__ = ["KINDS", "SUPPORTED", "KforgePatchWarning", "PatchReport", "patch", "unpatch"]
