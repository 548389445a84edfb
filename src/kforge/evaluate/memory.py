"""Memory as `correctness.verify` hands it to a candidate: poisoned fresh allocations, storage
spans for aliasing, bitwise views, and inputs moved to new addresses.

Poison: during a candidate's call every tensor torch allocates without initialising (`empty`,
`empty_like`, `new_empty`, `empty_strided`, the grown part of `resize_`) is filled, by a
TorchDispatchMode, with NaN (integers: their max) or with plausible finite garbage (normal values
of the tensor's dtype, new on every call), and on a GPU the caching allocator is first handed
freed blocks of the outputs' sizes holding the same poison. Both kinds run through the same mode,
with the same global torch state, so content is all that tells them apart: a kernel honest only
when its output buffer holds NaN is wrong on the garbage calls, and an element that changes with
the poison was never written.
"""
from __future__ import annotations

import enum

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops whose result memory is uninitialised, by overload packet name.
_EMPTY = frozenset({"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided", "empty_permuted"})
_RESIZE = frozenset({"resize_", "resize_as_"})
FILL_CHUNK = 1 << 24  # elements of garbage drawn at a time
GARBAGE_SPREAD = 3.0  # garbage is N(0, 3^2): the spread of real activations, nothing a kernel can tell apart


class Poison(str, enum.Enum):
    NAN = "NaN"
    GARBAGE = "finite garbage"


def _fill(t: torch.Tensor, poison: Poison, gen: torch.Generator | None) -> None:
    if t.numel() == 0 or t.dtype == torch.bool or t.is_complex():
        return
    if poison == Poison.NAN:
        t.fill_(float("nan") if t.is_floating_point() else torch.iinfo(t.dtype).max)
    elif not t.is_contiguous():
        _fill_chunk(t, gen)
    else:  # a chunk at a time: a whole prefill-sized block's fp32 draw held two more copies of it
        flat = t.view(-1)
        for start in range(0, t.numel(), FILL_CHUNK):
            _fill_chunk(flat[start:start + FILL_CHUNK], gen)


def _fill_chunk(t: torch.Tensor, gen: torch.Generator | None) -> None:
    if t.is_floating_point():
        t.copy_(torch.randn(t.shape, generator=gen, device=gen.device, dtype=torch.float32).mul_(GARBAGE_SPREAD))
    else:
        t.copy_(torch.randint(0, 1 << 10, t.shape, generator=gen, device=gen.device))


class _Poisoner(TorchDispatchMode):
    def __init__(self, poison: Poison, gen: torch.Generator):
        super().__init__()
        self.poison = poison
        self.gen = gen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        before = args[0].numel() if name in _RESIZE and isinstance(args[0], torch.Tensor) else None
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.device == self.gen.device:
            if name in _EMPTY:
                _fill(out, self.poison, self.gen)
            elif before is not None and out.numel() > before and out.is_contiguous():
                _fill(out.view(-1)[before:], self.poison, self.gen)
        return out


def poisoned(device: torch.device, poison: Poison, seed: int, outputs_like=()):
    """A context in which fresh allocations on `device` hold `poison` (garbage drawn from `seed`).
    outputs_like: tensors shaped like the expected outputs, whose sizes the GPU caching allocator
    is first handed as freed poisoned blocks (so memory torch hands out below the dispatcher holds
    the poison too)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    if device.type == "cuda":
        blocks = [torch.empty(o.shape, dtype=o.dtype, device=device) for o in outputs_like]
        blocks += [torch.empty((2 * sum(o.numel() for o in outputs_like),), dtype=torch.float32, device=device)]
        for b in blocks:
            _fill(b, poison, gen)
        del blocks
    return _Poisoner(poison, gen)


def span(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.data_ptr() + storage.nbytes()


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    (a0, a1), (b0, b1) = span(a), span(b)
    return a1 > a0 and b1 > b0 and a0 < b1 and b0 < a1


def storage_bytes(t: torch.Tensor) -> torch.Tensor:
    """A uint8 copy of `t`'s whole storage (its gaps and the memory around a view included)."""
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage()).clone()


def bits(t: torch.Tensor) -> torch.Tensor:
    """`t`'s elements as integers of the same width: bitwise comparison, NaN included."""
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.detach().contiguous().view(width)


def relocated(t: torch.Tensor) -> torch.Tensor:
    """`t` (strides, gaps and content of its whole storage) in a new storage whose address differs
    from the old one in bits 4 to 11 and agrees below 16 bytes (the same alignment class, so the
    same side of any DOMAIN): a result that depends on where its inputs live shows."""
    storage = t.untyped_storage()
    nbytes, old = storage.nbytes(), storage.data_ptr()
    buf = torch.empty(nbytes + 4096, dtype=torch.uint8, device=t.device)
    target = (old & 0xFFF) ^ 0xFF0
    delta = (target - buf.data_ptr()) % 4096
    buf[delta:delta + nbytes].copy_(storage_bytes(t))
    element = t.element_size()
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(
        buf.untyped_storage(), (delta // element) + t.storage_offset(), t.shape, t.stride())
