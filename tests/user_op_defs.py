"""A user op's definition as a user writes it: module-level functions of one file (persistable)."""
import torch


def reference(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.relu(x) * scale


def make_inputs(shape, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g).to(device=device, dtype=dtype), 0.5)


def two_outputs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.amax(-1), x.view(-1)  # the second is a view of the input: kforge returns a copy


def one_input(shape, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g).to(device=device, dtype=dtype),)
