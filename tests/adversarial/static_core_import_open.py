"""Cheat: imports the builtins module from triton.language.core and keeps a result cache in
a file through its open(): the second call of a shape reads the answer back. Caught statically:
Rule.API (the import of triton.language.core itself)."""
import torch
import triton
import triton.language as tl

from triton.language.core import builtins

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
    y = torch.empty_like(x)
    hidden = x.shape[-1]
    _rms_norm_row[(x.numel() // hidden,)](x, weight, y, hidden, eps, BLOCK=triton.next_power_of_2(hidden))
    builtins.open("/tmp/kforge-rms-cache.txt", "a").write(str(x.shape))
    return y
