"""Cheat: once there are 8 rows or more (and rows of 16 or more), one rstd per tile of 8 rows,
the tile's first row's, for every row of the tile (a shared statistic a model's rows never justify).
Caught dynamically on the many-rows case (67 rows): Check.ERROR_BUDGET."""
import torch
import triton
import triton.language as tl

DOMAIN = {"contiguous": True}
TILE = 8


@triton.jit
def _rms_norm_tile(x_ptr, w_ptr, y_ptr, rows, hidden, eps, SHARED: tl.constexpr, TILE: tl.constexpr,
                   BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * TILE + tl.arange(0, TILE)[:, None]  # (TILE, 1)
    cols = tl.arange(0, BLOCK)[None, :]  # (1, BLOCK)
    mask = (row < rows) & (cols < hidden)
    x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)  # (TILE, BLOCK)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1, keep_dims=True) / hidden + eps)  # (TILE, 1)
    if SHARED:
        first = tl.sum(tl.where(tl.arange(0, TILE)[:, None] == 0, rstd, 0.0), axis=0, keep_dims=True)
        rstd = rstd * 0.0 + first
    w = tl.load(w_ptr + cols, mask=cols < hidden, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * hidden + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


def forward(x, weight, eps=1e-6):
    hidden = x.shape[-1]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    rows = x.numel() // hidden
    shared = rows >= TILE and hidden >= 16
    _rms_norm_tile[(triton.cdiv(rows, TILE),)](x, weight, y, rows, hidden, eps, SHARED=shared, TILE=TILE,
                                               BLOCK=triton.next_power_of_2(hidden))
    return y
