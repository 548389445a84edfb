"""What a `kforge generate` run makes of each proposal, and of itself at the end.

Per proposal (`conclude`): archive the attempt, update lineages, feedback and the best record per
key. A source identical to one this run already evaluated (same sha256 of the extracted source,
the hash the store and `RunState.tried` use) is not evaluated again: its attempt says `duplicate`
and names the attempt that was. A proposal the time budget left unevaluated is archived as `not
run`. Per run (`failure`): why a run failed although it ran: its provider failed on every attempt
(connection refused, HTTP 401, timeouts: the first error is named), it accepted candidates but
recorded nothing (and why), or the time budget ran out before any candidate was evaluated.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import time
from typing import Any, Sequence

from kforge.gen import prompt
from kforge.gen.archive import Archive, Attempt
from kforge.gen.run_state import KeyBest, RunState, Variant, key_label
from kforge.gen.types import Provider
from kforge.store import sha256_of

FEEDBACK_KEPT = 3  # failures shown to the next prompt
NOT_RUN = object()  # the evaluation of a proposal the time budget stopped before it started


class Budget:
    """A run's time budget, counted from `started` (monotonic; a resumed run's earlier sessions
    are subtracted by the caller)."""

    def __init__(self, started: float, max_seconds: float | None):
        self.started, self.max_seconds = started, max_seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def spent(self) -> bool:
        return self.max_seconds is not None and self.elapsed() >= self.max_seconds

    def why(self) -> str:
        return f"time budget spent: {self.elapsed():.0f} s >= {self.max_seconds:.0f} s"

    def timeout(self, default: float, floor: float = 30.0) -> float:
        """A candidate's evaluation limit: `default`, or what is left of the budget (at least `floor`)."""
        if self.max_seconds is None:
            return default
        return min(default, max(self.max_seconds - self.elapsed(), floor))


def mark_duplicates(proposals: Sequence[Any], state: RunState) -> None:
    """Set `duplicate` on each proposal whose source this run evaluated before, or an earlier
    proposal of the same batch carries: those are archived, never evaluated again."""
    seen = set(state.tried)
    for p in proposals:
        if p.source is None:
            continue
        sha = sha256_of(p.source)
        p.duplicate = sha in seen
        seen.add(sha)


def _outcome(p, evaluation, state: RunState, sha: str | None) -> tuple[str, str, str | None, str | None, list]:
    """(verdict, reason, check, case, measurements) of one proposal."""
    if evaluation is NOT_RUN:
        return "not run", "the time budget was spent before it could be evaluated", "budget", None, []
    if p.duplicate:
        first = state.evaluated.get(sha)
        of = f"attempt {first}" if first else "an earlier attempt of this run"
        return "duplicate", f"identical to {of} (sha256 {sha[:12]}): not evaluated again", "duplicate", None, []
    if evaluation is None:
        return "error" if p.check == "provider" else "rejected", p.error or "", p.check, None, []
    return (evaluation.verdict, evaluation.reason, evaluation.check, evaluation.case,
            [m.to_json() for m in evaluation.measurements])


def conclude(p, evaluation, state: RunState, archive: Archive, table, provider: Provider, model: str | None,
             r: int) -> None:
    """Archive the attempt of proposal `p` (round `r`), update lineages, feedback, the best record per
    key and the run's account of failures; `evaluation`: the harness's, None (no source), or NOT_RUN."""
    usage = p.usage
    state.usage = state.usage + usage
    sha = None if p.source is None else sha256_of(p.source)
    verdict, reason, check, case, measurements = _outcome(p, evaluation, state, sha)
    speedup = _geomean([m["speedup_vs_vendor"] for m in measurements]) if measurements else None
    last = p.completions[-1] if p.completions else None
    attempt = Attempt(
        id=archive.new_id(), run_id=state.run_id, op=state.op, device=state.fingerprint, round=r,
        variant=p.variant, parent=None if p.parent is None else p.parent.attempt_id,
        parent_sha256=None if p.parent is None else p.parent.sha256, provider=provider.name,
        model=(last.model if last else model) or provider.name, messages=[m.to_json() for m in p.messages],
        response="" if last is None else last.text, source=p.source, sha256=sha, verdict=verdict, reason=reason,
        check=check, case=case, measurements=measurements, best_speedup=speedup, usage=usage.to_json(),
        latency_s=sum(c.latency_s for c in p.completions),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    archive.add(attempt)
    state.done[f"{r}:{p.variant}"] = attempt.id
    state.attempts += 1
    if verdict in ("duplicate", "not run"):
        return
    if sha:
        state.tried = sorted(set(state.tried) | {sha})
        state.evaluated.setdefault(sha, attempt.id)
    if check == "provider" and not p.exhausted:
        state.provider_errors = state.provider_errors + [reason]
    if evaluation is None or not evaluation.accepted:
        _feedback(p, evaluation, state)
        return
    _accepted(p, evaluation, state, table, attempt.id, sha, speedup, measurements)


def _feedback(p, evaluation, state: RunState) -> None:
    if evaluation is not None:
        fb = prompt.feedback_from_evaluation(evaluation)
    elif p.problem is not None:
        fb = prompt.feedback_from_answer(p.problem)
    else:
        fb = None  # the provider failed: nothing for the next prompt to learn
    if fb is not None:
        state.feedback = (state.feedback + [fb])[-FEEDBACK_KEPT:]


def _accepted(p, evaluation, state: RunState, table, attempt_id: str, sha: str, speedup, measurements) -> None:
    state.accepted += 1
    fractions = [m["roofline"]["fraction_of_ceiling"] for m in measurements if m.get("roofline")]
    variant = Variant(sha, attempt_id, p.source, speedup or 0.0, min(fractions) if fractions else None, measurements)
    lineages = sorted(state.lineages + [variant], key=lambda x: (-x.speedup, x.attempt_id))
    state.lineages = lineages[:state.settings.top_k]
    for s in evaluation.skipped:  # keys whose timing was refused (a stall): no record there, and why
        state.skipped[key_label(s.get("dtype"), s.get("shape") or ())] = str(s.get("why"))
    if not evaluation.records:
        state.unrecorded = (state.unrecorded + [f"attempt {attempt_id}: {unrecorded_reason(evaluation)}"])[-5:]
    winning = []
    recordable = {r.key for r in evaluation.records}
    for m in evaluation.measurements:
        key = str(m.key)
        best = state.best.get(key)
        if m.key in recordable and (best is None or m.candidate.p50_us < best.p50_us):
            state.best[key] = KeyBest(m.candidate.p50_us, m.vendor.p50_us, evaluation.impl, attempt_id,
                                      list(m.shape), m.dtype)
            winning.append(m.key)
    if winning and state.record:
        # The harness returned every record of this evaluation; the run writes those of the keys
        # where this variant is the best so far, tagged with the attempt the archive just gave it.
        written = [r if r.source_sha256 is None else dataclasses.replace(r, attempt_id=attempt_id)
                   for r in evaluation.records if r.key in set(winning)]
        table.write(written)
        state.recorded += len(written)


def unrecorded_reason(evaluation) -> str:
    """Why an accepted evaluation produced no record."""
    if not evaluation.measurements:
        whys = sorted({f"{s.get('dtype')} {s.get('shape')}: {s.get('why')}" for s in evaluation.skipped})
        return ("no key was timed: " + "; ".join(whys)) if whys else "no key was timed"
    return ("its correctness evidence does not cover the timed keys "
            f"({', '.join(str(m.key.shape) for m in evaluation.measurements)}): the router would not serve them")


def failure(state: RunState, provider: str) -> str | None:
    """Why a finished run failed, or None: see the module docstring."""
    errors = state.provider_errors
    if errors and len(errors) == state.attempts:
        others = len(set(errors)) - 1
        return (f"the {provider} provider failed on every attempt ({state.attempts}): {errors[0]}"
                + (f" (and {others} other error(s))" if others else ""))
    # `best` holds only keys with a recordable result (`_accepted`); states saved before `recorded`
    # existed have their best keys recorded.
    if state.accepted and state.record and not state.best:
        why = "; ".join(state.unrecorded) or "no accepted candidate's result was recordable"
        return f"{state.accepted} candidate(s) accepted but nothing was recorded: {why}"
    if state.budget_stopped and not state.tried:
        return f"{state.status}: no candidate was evaluated"
    return None


def _geomean(values: Sequence[float]) -> float:
    values = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else 0.0
