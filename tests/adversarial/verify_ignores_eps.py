"""Cheat: normalises with a hard-coded eps of 1e-6 whatever `eps` the caller passes (right for the
one eps every earlier verification input used).
Caught dynamically on an eps variant (1e-2 or 0.5): Check.ERROR_BUDGET."""
import torch
import triton
import triton.language as tl

DOMAIN = {"contiguous": True}
EPS = 1e-6


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
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        _rms_norm_row[(x.numel() // hidden,)](x, weight, y, hidden, EPS, BLOCK=triton.next_power_of_2(hidden))
    return y
