"""Cheat: a ring of 16 output buffers per shape, each call computing into the next and returning
it (a cached result a caller holding 16 outputs never sees reused; the aliasing window was 12).
Caught dynamically by the stress trial (64 calls, every output kept alive): call 17 returns the
storage of call 1 (Check.STALE_OUTPUT)."""
import torch
import triton
import triton.language as tl

DOMAIN = {"contiguous": True}
RING = 16

_rings = {}


@triton.jit
def _rms_norm_row(x_ptr, w_ptr, y_ptr, hidden, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / hidden + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * hidden + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


def forward(x, weight, eps=1e-6):
    hidden = x.shape[-1]
    key = (tuple(x.shape), x.dtype, x.device)
    if key not in _rings:
        _rings[key] = [[torch.empty(x.shape, dtype=x.dtype, device=x.device) for _ in range(RING)], 0]
    ring = _rings[key]
    y = ring[0][ring[1] % RING]
    ring[1] += 1
    if x.numel():
        _rms_norm_row[(x.numel() // hidden,)](x, weight, y, hidden, eps, BLOCK=triton.next_power_of_2(hidden))
    return y
