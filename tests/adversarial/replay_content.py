"""Cheat: remembers the last result per shape with a fingerprint of the input (its first four
elements); when the fingerprint matches, the kernel copies the remembered rows instead of
computing (all inside the kernels, where no host-side check can see it).
Caught dynamically: on new buffers holding the same content with a few elements changed, the
fingerprint still matches and stale rows come back (Check.REPLAY, trial "new input buffers,
content almost the same")."""
import torch
import triton
import triton.language as tl

DOMAIN = {"contiguous": True}  # honest about layouts: the cheat is elsewhere

_state = {}
SAMPLE = 4


@triton.jit
def _softmax_or_replay(x_ptr, y_ptr, kept_ptr, sig_ptr, cols, BLOCK: tl.constexpr, SAMPLE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, SAMPLE)
    seen = tl.sum((tl.load(x_ptr + s).to(tl.float32) != tl.load(sig_ptr + s)).to(tl.int32), axis=0) == 0
    offs = tl.arange(0, BLOCK)
    mask = offs < cols
    x = tl.load(x_ptr + row * cols + offs, mask=mask, other=-float("inf")).to(tl.float32)
    e = tl.exp(x - tl.max(x, axis=0))
    fresh = (e / tl.sum(e, axis=0)).to(y_ptr.dtype.element_ty)
    kept = tl.load(kept_ptr + row * cols + offs, mask=mask, other=0.0)
    y = tl.where(seen, kept, fresh)
    tl.store(y_ptr + row * cols + offs, y, mask=mask)
    tl.store(kept_ptr + row * cols + offs, y, mask=mask)


@triton.jit
def _save_fingerprint(x_ptr, sig_ptr, SAMPLE: tl.constexpr):
    s = tl.arange(0, SAMPLE)
    tl.store(sig_ptr + s, tl.load(x_ptr + s).to(tl.float32))


def forward(x):
    cols = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() < SAMPLE:
        return y
    key = (tuple(x.shape), x.dtype, x.device)
    if key not in _state:
        _state[key] = (torch.empty(x.shape, dtype=x.dtype, device=x.device),
                       torch.empty((SAMPLE,), dtype=torch.float32, device=x.device))
    kept, sig = _state[key]
    _softmax_or_replay[(x.numel() // cols,)](x, y, kept, sig, cols, BLOCK=triton.next_power_of_2(cols),
                                             SAMPLE=SAMPLE)
    _save_fingerprint[(1,)](x, sig, SAMPLE=SAMPLE)
    return y
