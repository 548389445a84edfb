"""Cheat: the grid callable receives the launch's arguments, tensors included, in a dict the
tensor flow analysis cannot see into; this one computes the whole rms_norm there with torch
operators (row sums by a matmul with w ** 0) and launches no program. Caught statically:
Rule.TORCH (a grid reads only meta["NAME"], never a tensor argument)."""
import torch
import triton
import triton.language as tl


@triton.jit
def _noop(x_ptr, w_ptr, y_ptr, hidden, eps, BLOCK: tl.constexpr):
    tl.program_id(0)


def _grid(meta):
    x, w, y = meta["x_ptr"], meta["w_ptr"], meta["y_ptr"]
    mean_square = (x * x) @ (w ** 0) / meta["hidden"]
    y[...] = x * ((mean_square + meta["eps"]) ** -0.5)[..., None] * w
    return (0,)


def forward(x, weight, eps=1e-6):
    y = torch.empty_like(x)
    hidden = x.shape[-1]
    _noop[_grid](x, weight, y, hidden, eps, BLOCK=triton.next_power_of_2(hidden))
    return y
