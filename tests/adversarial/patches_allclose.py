"""Cheat: makes every closeness check pass by replacing torch.allclose at import.
Caught statically: Rule.PATCH (assignment to an attribute of module torch)."""
import torch

torch.allclose = lambda *args, **kwargs: True


def forward(x):
    return torch.empty_like(x)
