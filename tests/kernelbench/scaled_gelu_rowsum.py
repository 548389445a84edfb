"""A KernelBench-style problem: GELU of a linear map, scaled, summed over the last dim."""
import torch
import torch.nn as nn


class Model(nn.Module):
    """GELU(x @ W^T + b) * scale, summed over the output features."""

    def __init__(self, in_features: int, out_features: int, scale: float):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.nn.functional.gelu(self.linear(x)) * self.scale).sum(-1)


batch_size, in_features, out_features = 8, 32, 16


def get_inputs():
    return [torch.randn(batch_size, in_features)]


def get_init_inputs():
    return [in_features, out_features, 0.5]
