"""Cheat: replay_content's fingerprint replay (the first four inputs match the last call's: copy
the remembered rows), but only where its output memory does not hold NaN: honest whenever fresh
memory is NaN, as it used to be during every verification call, and replaying in production.
Caught dynamically on a call whose fresh memory holds finite garbage (new input buffers, content
almost the same): the replayed rows are bit for bit the last call's (Check.REPLAY)."""
import torch
import triton
import triton.language as tl

DOMAIN = {"contiguous": True}

_state = {}
SAMPLE = 4


@triton.jit
def _softmax_or_replay(x_ptr, y_ptr, kept_ptr, sig_ptr, cols, BLOCK: tl.constexpr, SAMPLE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, SAMPLE)
    seen = tl.sum((tl.load(x_ptr + s).to(tl.float32) != tl.load(sig_ptr + s)).to(tl.int32), axis=0) == 0
    old = tl.load(y_ptr + row * cols).to(tl.float32)
    offs = tl.arange(0, BLOCK)
    mask = offs < cols
    x = tl.load(x_ptr + row * cols + offs, mask=mask, other=-float("inf")).to(tl.float32)
    e = tl.exp(x - tl.max(x, axis=0))
    fresh = (e / tl.sum(e, axis=0)).to(y_ptr.dtype.element_ty)
    kept = tl.load(kept_ptr + row * cols + offs, mask=mask, other=0.0)
    y = tl.where(seen & (old == old), kept, fresh)
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
