"""A KernelBench-style problem whose sizes cannot vary: get_init_inputs() passes batch_size and
dim to the model (which ignores them, as many KernelBench files do), so both are fixed."""
import torch
import torch.nn as nn


class Model(nn.Module):
    """x / sqrt(mean(x^2) + 1e-6) over the last dim."""

    def __init__(self, batch_size: int, dim: int):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


batch_size = 8
dim = 64


def get_inputs():
    return [torch.randn(batch_size, dim)]


def get_init_inputs():
    return [batch_size, dim]
