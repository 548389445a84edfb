"""Choosing among records: which implementations may serve a call, fastest first.

A record is eligible for a call when
  - it is for the call's dtype signature and its exact shape, or, when no record has that shape,
    for the nearest measured shape with a record whose evidence reaches the call
    (`router.key.serving_shape`: never more rows than were verified);
  - its backend exists in this kforge and can run here;
  - its correctness evidence covers the call (dtypes and exact dims verified) and reaches it (a
    verified problem at least as large on every other dim: `router.key.reaches`);
  - its domain accepts the call (dtypes, contiguity, alignment, size limits);
  - it has not been switched off in this process after failing at call time.
Eligible records are ranked by `Record.score_us`, which includes the host cost of a call.
"""
from __future__ import annotations

import dataclasses

from kforge.backends import BACKENDS, BackendName
from kforge.records import CallInfo, Record
from kforge.router.key import exact_indices, largest_verified, reaches, serving_shape
from kforge.specs import OpSpec


@dataclasses.dataclass(frozen=True)
class Ranking:
    eligible: tuple[Record, ...]  # fastest first
    rejected: tuple[tuple[Record, str], ...]  # with the reason
    shape: tuple[int, ...] | None  # the measured shape used (the call's own, or the nearest)


def rank(spec: OpSpec, records: list[Record], call: CallInfo, disabled: frozenset | set = frozenset(), *,
         here: bool = True) -> Ranking:
    """The records that may serve `call`, fastest first, and the others with the reason. `here`:
    on this machine (a backend this process cannot run is passed over); False ranks as the records'
    own device would (`kforge table` for another machine's GPU)."""
    same_dtypes = [r for r in records if r.key.dtypes == call.key.dtypes]
    exact_idx = exact_indices(spec)
    shape = serving_shape(call.key.shape, same_dtypes, exact_idx)
    if shape is None:
        return Ranking((), (), None)
    eligible, rejected = [], []
    for record in (r for r in same_dtypes if r.key.shape == shape):
        reason = rejects(spec, record, call, exact_idx, disabled, here=here)
        if reason is None:
            eligible.append(record)
        else:
            rejected.append((record, reason))
    eligible.sort(key=lambda r: (r.score_us, r.impl))
    return Ranking(tuple(eligible), tuple(rejected), shape)


def rejects(spec: OpSpec, record: Record, call: CallInfo, exact_idx, disabled, *, here: bool = True) -> str | None:
    """Why `record` may not serve `call`, or None when it may (`here`: see `rank`)."""
    try:
        backend = BACKENDS[BackendName(record.backend)]
    except (ValueError, KeyError):
        return f"backend {record.backend!r} is not in this kforge"
    why = backend.available() if here else None
    if why is not None:
        return why
    if not backend.supports(spec, call.key):
        return f"backend {record.backend} does not support this key"
    if not record.evidence.covers(call.key, exact_idx):
        return "correctness evidence does not cover this call"
    if not reaches(call.key.shape, record.evidence.shapes, exact_idx):
        largest = largest_verified(call.key.shape, record.evidence.shapes, exact_idx)
        return (f"correctness evidence does not reach {'x'.join(map(str, call.key.shape))}: verified up to "
                f"{'x'.join(map(str, largest)) if largest else 'nothing of this shape'}")
    why = record.domain.rejects(call, spec.problem_dims)
    if why is not None:
        return f"outside its domain: {why}"
    if (call.key, record.impl) in disabled:
        return "switched off in this process after failing at call time"
    return None
