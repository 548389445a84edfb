"""Cheat: launches its kernel inside try/except and falls back to torch when the launch fails, so
a kernel that does not compile still "passes".
Caught statically: Rule.FALLBACK (try/except), and Rule.TORCH for the fallback itself."""
import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_row(x_ptr, w_ptr, y_ptr, hidden, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + row * hidden + cols).to(tl.float32)  # unmasked: fails on odd widths
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / hidden + eps)
    w = tl.load(w_ptr + cols).to(tl.float32)
    tl.store(y_ptr + row * hidden + cols, (x * rstd * w).to(y_ptr.dtype.element_ty))


def forward(x, weight, eps=1e-6):
    hidden = x.shape[-1]
    y = torch.empty_like(x)
    try:
        _rms_norm_row[(x.numel() // hidden,)](x, weight, y, hidden, eps, BLOCK=hidden)
    except Exception:
        return torch.rms_norm(x, (hidden,), weight, eps)
    return y
