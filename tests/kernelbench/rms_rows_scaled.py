"""A KernelBench-style problem: each row scaled to unit mean square, on inputs of scale 4."""
import torch
import torch.nn as nn


class Model(nn.Module):
    """x / sqrt(mean(x^2) + 1e-6) over the last dim."""

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


batch_size = 8
dim = 64


def get_inputs():
    return [torch.randn(batch_size, dim) * 4]


def get_init_inputs():
    return []
