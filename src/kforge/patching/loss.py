"""The causal-LM loss (`model.loss_function`, Hugging Face's `ForCausalLMLoss`): the logits upcast
to fp32, the labels shifted by one, cross-entropy with ignore_index, summed over
`num_items_in_batch` or averaged over the rows not ignored. kforge's `cross_entropy` gives the
per-row losses in one pass over the logits (F.cross_entropy writes the whole log-softmax first);
the reduction is the same. A call that needs a gradient (training: backward kernels are not
registered yet) or passes arguments this form does not know runs the model's own loss.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kforge import ops
from kforge.errors import KforgeInputError
from kforge.patching import probe
from kforge.patching.report import Entry

CAUSAL_LM = "ForCausalLM"


class CausalLMLoss:
    """The replacement of `model.loss_function` (a module-level class, so a patched model pickles)."""

    def __init__(self, original, had_own: bool):
        self.original, self.had_own = original, had_own  # the loss replaced; whether the model set its own

    def __call__(self, logits, labels, vocab_size: int, num_items_in_batch=None, ignore_index: int = -100,
                 shift_labels=None, **kwargs):
        if (kwargs or torch.compiler.is_compiling() or not isinstance(logits, torch.Tensor)
                or logits.shape[-1] != vocab_size or (torch.is_grad_enabled() and logits.requires_grad)):
            return self._own(logits, labels, vocab_size, num_items_in_batch, ignore_index, shift_labels, **kwargs)
        logits32 = logits.float()
        shifted = F.pad(labels, (0, 1), value=ignore_index)[..., 1:] if shift_labels is None else shift_labels
        target = shifted.reshape(-1).to(logits32.device)  # (rows,)
        try:
            rows = ops.cross_entropy(logits32.reshape(-1, vocab_size), target, ignore_index)  # (rows,), 0 where ignored
        except KforgeInputError:  # labels out of range: the model's own loss raises what it raises (IndexError)
            return self._own(logits, labels, vocab_size, num_items_in_batch, ignore_index, shift_labels)
        if num_items_in_batch is not None:
            if torch.is_tensor(num_items_in_batch):
                num_items_in_batch = num_items_in_batch.to(rows.device)
            return rows.sum() / num_items_in_batch
        return rows.sum() / (target != ignore_index).sum()

    def _own(self, logits, labels, vocab_size, num_items_in_batch, ignore_index, shift_labels, **kwargs):
        return self.original(logits, labels, vocab_size, num_items_in_batch=num_items_in_batch,
                             ignore_index=ignore_index, shift_labels=shift_labels, **kwargs)


def patch(model: nn.Module) -> Entry:
    """Replace a causal LM's loss function (an entry with no op where it is left)."""
    where = f"{type(model).__name__}.loss_function"
    if getattr(model, "loss_type", None) not in (None, CAUSAL_LM) or not type(model).__name__.endswith("ForCausalLM"):
        return Entry("loss", where, "", "not a causal LM's loss (ForCausalLMLoss)")
    try:
        original = model.loss_function
    except Exception as err:  # noqa: BLE001 - a model without HF's loss property is left, with the reason
        return Entry("loss", where, "", f"it has no loss_function ({type(err).__name__})")
    replacement = CausalLMLoss(original, "_loss_function" in vars(model))
    vocab = 11
    param = next(model.parameters())
    logits = probe.randn((2, 5, vocab), param, seed=6).float()
    labels = torch.tensor([[1, 4, -100, 7, 2], [3, -100, 10, 0, 5]], device=param.device)
    items = torch.tensor(6)
    with torch.no_grad():
        try:
            reason = (probe.disagreement(replacement(logits, labels, vocab), original(logits, labels, vocab))
                      or probe.disagreement(replacement(logits, labels, vocab, num_items_in_batch=items),
                                            original(logits, labels, vocab, num_items_in_batch=items)))
        except Exception as err:  # noqa: BLE001 - a loss kforge cannot run is one it leaves
            reason = f"raised {type(err).__name__}: {err}"
    if reason is not None:
        return Entry("loss", where, "", f"its output is not kforge's cross_entropy reduction: {reason}")
    model.loss_function = replacement
    return Entry("loss", where, "cross_entropy", "per-row losses in one pass, then HF's reduction (no grad only)")


def unpatch(model: nn.Module) -> None:
    replacement = vars(model).get("_loss_function")
    if not isinstance(replacement, CausalLMLoss):
        return
    if replacement.had_own:
        model._loss_function = replacement.original
    else:
        del model._loss_function
