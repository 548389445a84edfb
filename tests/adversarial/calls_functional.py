"""Cheat: launches nothing and calls torch.nn.functional (the vendor kernel it is meant to beat).
Caught statically: Rule.TORCH (host code may only allocate and launch)."""
import torch
import torch.nn.functional as F


def forward(x):
    return F.softmax(x, dim=-1)
