"""`assert_matches_reference`: the one correctness rule, shared by tests, evaluator and benchmarks.

For each output, with the oracle being the reference run on float64 copies of the inputs, and
m_i = |oracle_i| + atol, every element must satisfy
    |out_i - oracle_i| <= 2 * r * m_i + atol + rtol * |oracle_i|,
    r = max_j |reference_at_dtype_j - oracle_j| / m_j,
where `reference_at_dtype` is the reference run on the inputs as given (the error PyTorch itself
makes at that precision, taken relative to magnitude so small outputs keep a tight budget) and
(atol, rtol) is the spec's resolution floor for the dtype and problem. NaN and Inf must appear
exactly where the oracle has them (same sign for Inf); dtype, shape and device must match what the
reference returns.
"""
from __future__ import annotations

import dataclasses

import torch

from kforge.specs import OpSpec, OutputMismatch

REF_FACTOR = 2.0
CHUNK = 1 << 24  # elements compared at a time (a chunk's fp64 temporaries: 128 MB each)


@dataclasses.dataclass(frozen=True)
class Comparison:
    ok: bool
    max_error: float  # largest |out - oracle|
    worst_ratio: float  # largest error / allowed over elements (<= 1 passes)
    message: str  # empty when ok; otherwise the first problem, with the first bad index and values
    output: int | None = None  # the failing output, where one element failed
    index: tuple[int, ...] | None = None  # its first failing element (in `compare_view`'s view where the spec has one)


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def compare(spec: OpSpec, args: tuple, out, *, oracle=None, at_dtype=None, scale: float = 1.0) -> Comparison:
    """Compare `out` (what an implementation returned for `args`) with the reference. scale: the
    outputs' magnitude relative to what the spec's tolerance assumes (inputs drawn at another
    magnitude, `OpSpec.magnitudes`): the absolute floor is multiplied by it."""
    outs = _as_tuple(out)
    oracles = _as_tuple(oracle if oracle is not None else spec.oracle(args))
    lows = _as_tuple(at_dtype if at_dtype is not None else spec.reference(*args))
    if len(outs) != len(oracles):
        return Comparison(False, float("inf"), float("inf"),
                          f"{spec.name}: returned {len(outs)} outputs, expected {len(oracles)}")
    if spec.compare_view is not None:
        for n, (o, low) in enumerate(zip(outs, lows)):  # the view's own checks assume the metadata
            if not isinstance(o, torch.Tensor) or o.shape != low.shape or o.dtype != low.dtype or o.device != low.device:
                got = f"{tuple(o.shape)} {o.dtype} on {o.device}" if isinstance(o, torch.Tensor) else type(o).__name__
                return Comparison(False, float("inf"), float("inf"), f"{spec.name} output {n}: got {got}, "
                                  f"expected {tuple(low.shape)} {low.dtype} on {low.device}")
        try:
            outs = _as_tuple(spec.compare_view(args, outs))
        except OutputMismatch as exc:
            return Comparison(False, float("inf"), float("inf"), f"{spec.name}: {exc}")
        oracles = _as_tuple(spec.compare_view(args, oracles))
        lows = _as_tuple(spec.compare_view(args, lows))
    problem = spec.problem(args)
    worst_err, worst_ratio = 0.0, 0.0
    for n, (o, ref, low) in enumerate(zip(outs, oracles, lows)):
        where = f"{spec.name} output {n}"
        if not isinstance(o, torch.Tensor):
            return Comparison(False, float("inf"), float("inf"), f"{where}: not a tensor ({type(o).__name__})")
        if o.shape != low.shape or o.dtype != low.dtype or o.device != low.device:
            return Comparison(False, float("inf"), float("inf"),
                              f"{where}: got {tuple(o.shape)} {o.dtype} on {o.device}, "
                              f"expected {tuple(low.shape)} {low.dtype} on {low.device}")
        if o.numel() == 0:
            continue
        tol = spec.tolerance(o.dtype, problem)
        if scale != 1.0:
            tol = dataclasses.replace(tol, atol=tol.atol * scale)
        failed, err_n, ratio_n = _compare_one(where, n, o, ref, low, tol)
        if failed is not None:
            return failed
        worst_err, worst_ratio = max(worst_err, err_n), max(worst_ratio, ratio_n)
    return Comparison(True, worst_err, worst_ratio, "")


def assert_matches_reference(spec: OpSpec, args: tuple, out, **kwargs) -> Comparison:
    """Raise AssertionError with the first offending index and values unless `out` matches."""
    result = compare(spec, args, out, **kwargs)
    if not result.ok:
        raise AssertionError(result.message)
    return result


def _chunks(o: torch.Tensor, ref: torch.Tensor, low: torch.Tensor):
    """(start, o, ref, low) over flat slices of CHUNK elements: views, except a non-contiguous
    output (copied once at its own dtype)."""
    flat = [t.detach().reshape(-1) for t in (o, ref, low)]
    for start in range(0, flat[0].numel(), CHUNK):
        yield (start, *(t[start:start + CHUNK] for t in flat))


def _compare_one(where: str, n: int, o: torch.Tensor, ref: torch.Tensor, low: torch.Tensor, tol):
    """(failure or None, max error, max ratio) of output n, in fp64 on the output's own device
    (copying prefill-sized outputs to the host cost ~6 s per case on the H100 host), a chunk at a
    time: the whole output at once held ~10 fp64 copies of it, a prefill key's verification 34x
    its input's bytes (an H200 worker ran out of its 70 GB cap on silu_and_mul 16384x29568)."""
    def at(flat: int) -> tuple[int, ...]:
        return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), o.shape)) if o.dim() else ()

    ref_err = 0.0  # pass 1: non-finite placement, and the reference's own error at the dtype
    for start, got, want, lowp in _chunks(o, ref, low):
        got, want, lowp = (t.to(o.device, torch.float64) for t in (got, want, lowp))
        bad_special = (torch.isnan(got) != torch.isnan(want)) | (torch.isinf(got) != torch.isinf(want))
        bad_special |= torch.isinf(want) & (got != want)
        if bad_special.any():
            k = int(bad_special.nonzero()[0])
            return Comparison(False, float("inf"), float("inf"), f"{where}: non-finite mismatch at {at(start + k)}: "
                              f"got {got[k].item()}, expected {want[k].item()}", n, at(start + k)), 0.0, 0.0
        finite = torch.isfinite(want)
        if finite.any():
            magnitude = want.abs() + tol.atol
            ref_err = max(ref_err, float(((lowp - want).abs() / magnitude)[finite].max()))
    worst_err, worst_ratio = 0.0, 0.0  # pass 2: every element against its budget
    for start, got, want, _ in _chunks(o, ref, low):
        got, want = (t.to(o.device, torch.float64) for t in (got, want))
        finite = torch.isfinite(want)
        magnitude = want.abs().where(finite, torch.zeros_like(want)) + tol.atol
        err = torch.where(finite, (got - want).abs(), torch.zeros_like(got))
        allowed = REF_FACTOR * ref_err * magnitude + tol.atol + tol.rtol * (magnitude - tol.atol)
        ratio = err / allowed
        max_ratio = float(ratio.max())
        worst_err = max(worst_err, float(err.max()))
        worst_ratio = max(worst_ratio, max_ratio)
        if max_ratio > 1.0:
            k = int((ratio > 1.0).nonzero()[0])
            idx = at(start + k)
            return Comparison(False, worst_err, worst_ratio,
                              f"{where}: error {float(err[k]):.3g} over budget {float(allowed[k]):.3g} at index {idx}: "
                              f"got {got[k].item():.6g}, expected {want[k].item():.6g} "
                              f"(reference at {o.dtype} errs up to {ref_err:.3g} relative)", n, idx), 0.0, 0.0
    return None, worst_err, worst_ratio
