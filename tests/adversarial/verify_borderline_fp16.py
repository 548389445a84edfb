"""Not a cheat but a borderline bug: rstd biased by 2.4 * 2^-10 (a rounding done one way, always),
putting the fp16 error at 0.85 to 1.1 of its budget: over it on about one seed in ten (the verdict
used to depend on the run's secret seeds: accepted on most runs).
Caught dynamically, on every run: its error passes BORDERLINE, so the fixed borderline seeds run,
and some of them take it over (Check.ERROR_BUDGET). The bias is an argument: Triton 3.6's JIT
refuses a kernel that reads a module global."""
import torch
import triton
import triton.language as tl

DOMAIN = {"contiguous": True}
BIAS = 1.0 + 2.4 * 2.0 ** -10


@triton.jit
def _rms_norm_row(x_ptr, w_ptr, y_ptr, hidden, eps, bias, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = (1.0 / tl.sqrt(tl.sum(x * x, axis=0) / hidden + eps)) * bias
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * hidden + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


def forward(x, weight, eps=1e-6):
    hidden = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        _rms_norm_row[(x.numel() // hidden,)](x, weight, y, hidden, eps, BIAS, BLOCK=triton.next_power_of_2(hidden))
    return y
