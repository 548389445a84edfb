"""Cheat (GPU only): each row's sum of squares is split over many programs that add their partial
sums with fp32 atomics, whose order changes from run to run on a GPU, so two runs on the same
input differ in their last bits (each within budget). The CPU interpreter runs programs one after
another, in order, so there it is deterministic and passes: this case is run on the GPU.
Caught dynamically: the repeated call is not bitwise equal to the first (Check.NONDETERMINISTIC)."""
import torch
import triton
import triton.language as tl

DOMAIN = {"contiguous": True}

CHUNK = 64


@triton.jit
def _zero(ws_ptr, rows, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(ws_ptr + offs, tl.zeros((BLOCK,), dtype=tl.float32), mask=offs < rows)


@triton.jit
def _partial_sumsq(x_ptr, ws_ptr, hidden, CHUNK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * CHUNK + tl.arange(0, CHUNK)
    x = tl.load(x_ptr + row * hidden + cols, mask=cols < hidden, other=0.0).to(tl.float32)
    tl.atomic_add(ws_ptr + row, tl.sum(x * x, axis=0))


@triton.jit
def _scale(x_ptr, w_ptr, ws_ptr, y_ptr, hidden, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.load(ws_ptr + row) / hidden + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * hidden + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


def forward(x, weight, eps=1e-6):
    hidden = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    rows = x.numel() // hidden
    ws = torch.empty(rows, dtype=torch.float32, device=x.device)
    _zero[(triton.cdiv(rows, 1024),)](ws, rows, BLOCK=1024)
    _partial_sumsq[(rows, triton.cdiv(hidden, CHUNK))](x, ws, hidden, CHUNK=CHUNK)
    _scale[(rows,)](x, weight, ws, y, hidden, eps, BLOCK=triton.next_power_of_2(hidden))
    return y
