"""Cheat: calls the registered op back through the dispatcher, which routes to vendor.
Caught statically: Rule.KFORGE (torch.ops.kforge)."""
import torch


def forward(x, weight, eps=1e-6):
    return torch.ops.kforge.rms_norm(x, weight, eps)
