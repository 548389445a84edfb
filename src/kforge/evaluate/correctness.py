"""Correctness of a candidate's `forward`, hard to fool: the evaluator's verdict on what may be routed.

    verdict = verify(spec, candidate.forward, device="cpu", domain=candidate.domain, secret_seed=s)
    verdict.accepted, verdict.check, verdict.reason, verdict.case, verdict.evidence

The error rule is `kforge.testing.compare` (fp64 oracle, budget from the reference's own error at
the kernel's dtype); this module decides what to run and what else must hold. Cases (`cases`):
  - every dtype asked for (default: the op's dtypes), on every shape of the op's shape sets that
    fit the device ("smoke", "odd", "edge" on a CPU; plus "decode" and "prefill" on a GPU), plus
    for row ops a long row (2, 16384) (fp16 accumulation passes short rows and fails there) and
    MANY_ROWS (67) short rows (statistics shared across a tile of rows fail there);
  - the caller's public seeds, and seeds and shapes derived from its `secret_seed`, which the
    generator never saw (a table of the shapes it was shown, or a seed-keyed answer, fails them);
  - a special case per shape: a NaN in one row (the outputs the reference makes NaN must be NaN)
    and an all-zero row (padding rows are zeros in real models; a missing epsilon gives NaN);
  - non-contiguous layouts (rows sliced out of wider rows, every other column, storage starting
    one element in, rows unevenly spaced across blocks) where the candidate's domain accepts them,
    with NaN in the gaps so a kernel that ignores strides reads NaN; cases outside the domain are
    skipped, exactly as the router would (`Domain.rejects` on the call), so a verdict covers the
    domain and nothing more;
  - variants, taken in turn by every case after a group's first (special cases excepted): inputs
    at the spec's other magnitudes (`OpSpec.magnitudes`: 2^-10 and ~2^7, the budget's floor
    following the outputs) and its scalar arguments' other values (`OpSpec.scalar_variants`:
    eps 1e-2 and 0.5, ...); a variant case whose reference is not finite (outside the dtype's
    range) is skipped.
Every call runs with the same global torch state; its fresh allocations hold a poison (`memory`):
NaN on a case's first call when the case's index in its group is even, plausible finite garbage
(new each call) otherwise, so a kernel cannot know a verification call from a production one by
anything but memory content. After the call, in order: it returned exactly `torch.Tensor`s (a
subclass may compute on first touch) of the right count, shape, dtype and device; no output shares
storage with an input, a reference output, another output, or an earlier call's output (kept alive,
up to HISTORY_BYTES); every input is bitwise unchanged (whole storage, gaps included); NaN/Inf only
where the reference has them and NaN wherever it has NaN; then the error budget. A wrong output is
UNWRITTEN where it changes when the call is repeated under another poison, REPLAY where its bad
row is bit for bit an earlier call's, else the check that failed (ERROR_BUDGET, NONFINITE, ...).
Per shape, the first case is also called again on copies of its inputs at new addresses under the
other poison (outputs bitwise equal: reads of uninitialised memory, racy reductions and results that
depend on addresses differ), on new content in the same buffers (a result keyed by data_ptr
replays), and on new buffers holding the same content with a few elements changed (a result keyed
by a sample of the content replays). Per dtype, the first shape is called STRESS_CALLS more times,
every output kept alive and compared bitwise with the first (a ring of output buffers reuses one).
Borderline errors: a group whose worst error ratio passes BORDERLINE is run again on the fixed
BORDERLINE_SEEDS (never the secret), so a candidate over its budget on some inputs is rejected on
every run, whatever the run's secret.

Cost: on a CPU under Triton's interpreter, ~5 s per dtype for a row kernel over the CPU sets; the
variants, uneven rows, many rows and the stress trial took it from 108 to 180 candidate calls and
1.42-1.48x the CPU time (fp32, CPU sets: rms_norm_rowwise 2.9 -> 4.3 s, softmax_online 9.5 -> 13.9 s,
on a loaded 2-core host), most of it the 64 stress calls on the smallest shape. On
an H100 (measured before the variants and the stress trial): ~1 s per dtype without "prefill";
~80 s with it, ~6 s a call at (16384, 8192), almost all of it `compare` and input generation.
"""
from __future__ import annotations

import secrets
from typing import Any, Callable, Iterable, Sequence

import torch

from kforge.evaluate.cases import SECRET_SHAPES, Layout, build
from kforge.evaluate.verdict import Check, Trial, Verdict
from kforge.evaluate.verifier import Verifier
from kforge.records import Domain
from kforge.specs import OpSpec

__all__ = ["Check", "Trial", "Verdict", "verify"]

Shape = tuple[int, ...]

DEFAULT_SEEDS = (0, 1)


def verify(spec: OpSpec, forward: Callable[..., Any], *, device="cpu", dtypes: Iterable[torch.dtype] | None = None,
           shape_sets: Sequence[str] | None = None, shapes: Iterable[Shape] | None = None,
           seeds: Iterable[int] = DEFAULT_SEEDS, secret_seed: int | None = None, domain: Domain | None = None,
           layouts: Iterable[Layout] | None = None, long_row: bool | None = None, many_rows: bool | None = None,
           secret_shapes: int = SECRET_SHAPES, replay: bool = True, timed: Iterable[Shape] = ()) -> Verdict:
    """Verify `forward` (a candidate's, with `spec`'s signature) against `spec`'s reference.

    device: where inputs live ("cpu", "cuda", ...). dtypes: of the primary input (default
    spec.dtypes). shapes: primary-input shapes, replacing `shape_sets` (default: the sets that fit
    the device). seeds: public seeds. secret_seed: derives the secret seeds and shapes and the
    garbage poison (default: fresh from the OS, so every run differs). domain: the candidate's
    DOMAIN (default: every call). layouts: default all, each run only where `domain` accepts it.
    long_row, many_rows: add the long row and the many-rows case (default: for row ops, when
    `shapes` is not given). secret_shapes: how many. replay: run the repeat, replay and stress
    trials. timed: shapes verified besides the others, the ones records will be written for (the
    router serves a record no further than its evidence). Returns the first failure, or an
    acceptance with the evidence (dtype signatures, problems and seeds verified, worst error ratio).
    """
    device = torch.device(device)
    secret = secrets.randbits(63) if secret_seed is None else int(secret_seed)
    groups = build(spec, device, dtypes, shape_sets, shapes, tuple(seeds), secret,
                   tuple(Layout) if layouts is None else tuple(layouts), long_row, many_rows, secret_shapes,
                   tuple(tuple(t) for t in timed))
    return Verifier(spec, forward, device, domain or Domain(), secret, replay).run(groups)
