"""The search loop of `kforge generate`: rounds of variants, top-K lineages, evaluation through the
harness, every attempt archived, the best verified kernel per key recorded.

    result = run(op, provider, Settings(rounds=3, variants=4, top_k=2), device="cuda",
                 dtypes=[torch.bfloat16], shapes=[(32, 4096)])

Per round, each variant v continues lineage v mod K (the K best accepted variants so far; none in
round 0: the provider starts from scratch or from its seeds): prompt -> provider -> code
extraction and static checks (one corrective re-prompt for a malformed answer) -> the harness
(sandboxed verification, timing with vendor in the same run) in parallel over the executor's
slots. A variant that is the fastest this run has seen at a key is written to the score table at
once (kernel and vendor records of the same run, with provider, attempt id and parent), so an
interrupted run loses nothing it proved. The state after every attempt is saved
(`kforge.gen.run_state`); `run(..., resume=RUN_ID)` continues where it stopped.

Stops at `rounds`, at the target (speedup over vendor, or fraction of the roofline on every key),
at the token or time budget, or when the provider has nothing new to offer. The time budget is
checked before every provider call and before every candidate's evaluation, not only between
rounds; what was done is kept. A source this run evaluated already is archived as a duplicate, not
evaluated again; `RunResult.failure` says why a run failed although it ran (`gen.conclude`).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import time
from typing import Any, Callable, Sequence

import torch

from kforge.device import fingerprint, installed_version
from kforge.gen import extract, knowledge, prompt
from kforge.gen.archive import Archive
from kforge.gen.conclude import NOT_RUN, Budget, conclude, failure, mark_duplicates
from kforge.gen.run_state import KeyBefore, RunState, Settings, Variant
from kforge.gen.types import (Completion, GenerationContext, Message, Provider, ProviderError, ProviderExhausted,
                              Role, Usage)
from kforge.ops import get_spec
from kforge.specs import OpSpec



@dataclasses.dataclass
class RunResult:
    run_id: str
    op: str
    status: str  # "finished: <why it stopped>"
    rounds_done: int
    attempts: int
    accepted: int
    best: Variant | None
    keys: list[dict]  # per key: before and after (impl, p50), the winning attempt
    usage: Usage
    seconds: float
    recorded: int = 0  # score-table records written
    failure: str | None = None  # why the run failed (`conclude.failure`): the command exits non-zero
    failures: list[str] = dataclasses.field(default_factory=list)  # the provider's errors, one per failed attempt
    budget_stopped: bool = False  # the time budget ended it (what was done is kept)
    unrecorded_keys: list[dict] = dataclasses.field(default_factory=list)  # requested keys left unrecorded, and why

    def to_json(self) -> dict:
        return {"run_id": self.run_id, "op": self.op, "status": self.status, "rounds_done": self.rounds_done,
                "attempts": self.attempts, "accepted": self.accepted, "recorded": self.recorded,
                "failure": self.failure, "failures": self.failures, "budget_stopped": self.budget_stopped,
                "best": None if self.best is None else {k: v for k, v in self.best.to_json().items() if k != "source"},
                "keys": self.keys, "unrecorded_keys": self.unrecorded_keys, "usage": self.usage.to_json(),
                "seconds": round(self.seconds, 1)}


# -- the loop ------------------------------------------------------------------------------------
def run(op: str, provider: Provider, settings: Settings = Settings(), *, device: str = "cpu",
        dtypes: Sequence[torch.dtype] | None = None, shapes: Sequence[tuple[int, ...]] | None = None,
        executor=None, resume: str | None = None, archive: Archive | None = None, table=None,
        model: str | None = None, record: bool = True,
        on_progress: Callable[[str], None] | None = None) -> RunResult:
    """Search for kernels of `op` at `shapes` x `dtypes` on `device`; see the module docstring."""
    from kforge.evaluate.executors import LocalPoolExecutor
    from kforge.router.table import ScoreTable

    spec = get_spec(op)
    archive = archive or Archive()
    table = table or ScoreTable()
    say = on_progress or (lambda message: None)
    if resume:
        state = RunState.resume(resume, op)  # the saved settings, device, dtypes and shapes win
    else:
        state = RunState.new(op, device, dtypes or _default_dtypes(spec), shapes or list(spec.shapes("smoke")),
                             provider.name, model, settings)
        state.record = record
        state.before = _best_per_key(table, state.fingerprint, op)
        state.save()
    settings, device, dtypes, shapes = state.settings, state.device, state.torch_dtypes, state.shapes
    own_executor = executor is None
    executor = executor or LocalPoolExecutor()
    fp = str(fingerprint(torch.device(device)))
    started = time.monotonic() - state.elapsed_s
    budget = Budget(started, settings.max_seconds)
    context = _PromptContext(spec, fp, device, dtypes, shapes)
    try:
        while state.round < settings.rounds and not state.status:
            why = _should_stop(state, budget)
            if why:
                state.status = why
                break
            r = state.round
            pending = [v for v in range(settings.variants) if f"{r}:{v}" not in state.done]
            proposals = []
            for v in pending:
                if budget.spent():  # checked before every provider call: an LLM answer can take minutes
                    break
                step = f"round {r + 1}/{settings.rounds} variant {v + 1}/{settings.variants}: asking {provider.name}"
                say(_progress_line(state, step))
                proposals.append(_propose(provider, context, state, r, v))
            if pending and proposals and all(p.exhausted for p in proposals):
                state.status = f"the {provider.name} provider has no untried variant left"
            mark_duplicates(proposals, state)
            say(_progress_line(state, f"round {r + 1}/{settings.rounds}: evaluating "
                                      f"{sum(p.source is not None and not p.duplicate for p in proposals)} candidate(s)"))
            for proposal, evaluation in _evaluate_all(proposals, spec, device, dtypes, shapes, executor, settings,
                                                      provider.name, budget):
                conclude(proposal, evaluation, state, archive, table, provider, model, r)
                state.save()
            if budget.spent() and not state.status:
                state.status, state.budget_stopped = budget.why(), True
            if not state.status:
                state.round = r + 1
            state.elapsed_s = time.monotonic() - started
            state.save()
        if not state.status:
            state.status = _should_stop(state, budget) or f"ran {settings.rounds} round(s)"
        state.elapsed_s = time.monotonic() - started
        state.save()
        _learn(state, spec, fp, provider, say)
    finally:
        if own_executor:
            executor.close()
    return _result(state)


@dataclasses.dataclass
class _Proposal:
    round: int
    variant: int
    parent: Variant | None
    messages: list[Message]
    completions: list[Completion]
    source: str | None = None
    error: str | None = None  # why no source came out of the answer
    check: str | None = None
    problem: Any = None  # the last ExtractionError or static findings (for the next prompt's feedback)
    exhausted: bool = False  # the provider had nothing new (catalog)
    duplicate: bool = False  # its source was evaluated before in this run (`conclude.mark_duplicates`)

    @property
    def usage(self) -> Usage:
        total = Usage()
        for c in self.completions:
            total = total + c.usage
        return total


@dataclasses.dataclass
class _PromptContext:
    spec: OpSpec
    fingerprint: str
    device: str
    dtypes: list
    shapes: list

    def ceilings(self):
        from kforge.evaluate import roofline

        return roofline.ceilings(torch.device(self.device))


def _propose(provider: Provider, ctx: _PromptContext, state: RunState, r: int, v: int) -> _Proposal:
    lineages = state.lineages
    parent = lineages[v % len(lineages)] if lineages else None
    gen_context = GenerationContext(
        op=ctx.spec.name, round=r, variant=v, seed=_seed(state.run_id, r, v),
        parent_source=None if parent is None else parent.source, parent_sha256=None if parent is None else parent.sha256,
        dtypes=tuple(state.dtypes), shapes=tuple(state.shapes), exclude=frozenset(state.tried))
    triton_version = installed_version("triton") or "none"
    entries = knowledge.relevant(knowledge.load(ctx.spec.name), _gpu_name(ctx.fingerprint), state.dtypes[0],
                                 triton_version)
    messages = prompt.build_messages(
        ctx.spec, device=ctx.fingerprint, ceilings=ctx.ceilings(), triton_version=triton_version,
        dtypes=state.dtypes, shapes=list(state.shapes), knowledge=entries,
        priors=[_prior(x) for x in lineages], feedback=list(state.feedback),
        parent_source=None if parent is None else parent.source,
        evolve=parent is not None and "EVOLVE-BLOCK-START" in parent.source)
    proposal = _Proposal(r, v, parent, list(messages), [])
    for attempt in range(state.settings.corrective_retries + 1):
        try:
            completion = provider.complete(proposal.messages, context=gen_context)
        except ProviderError as exc:
            proposal.error, proposal.check = str(exc), "provider"
            proposal.exhausted = isinstance(exc, ProviderExhausted)
            return proposal
        proposal.completions.append(completion)
        try:
            extracted = extract.check_answer(completion.text, ctx.spec, parent_source=gen_context.parent_source)
        except extract.ExtractionError as exc:
            problem, check = exc, "format"
        else:
            if not extracted.findings:
                proposal.source, proposal.error, proposal.check, proposal.problem = extracted.source, None, None, None
                return proposal
            problem, check = extracted.findings, f"static:{extracted.findings[0].rule.value}"
        proposal.error, proposal.check, proposal.problem = (str(problem) if check == "format"
                                                            else "; ".join(str(f) for f in problem)), check, problem
        if attempt < state.settings.corrective_retries:
            proposal.messages += [Message(Role.ASSISTANT, completion.text), extract.corrective_message(problem)]
    return proposal


def _evaluate_all(proposals, spec: OpSpec, device, dtypes, shapes, executor, settings, provider_name: str,
                  budget: Budget):
    """(proposal, Evaluation | None | NOT_RUN) for each proposal, candidates evaluated in parallel;
    the budget is checked as each evaluation starts (NOT_RUN once it is spent)."""
    from kforge.evaluate.harness import evaluate_source

    def one(p: _Proposal):
        if p.source is None or p.duplicate:
            return None
        if budget.spent():
            return NOT_RUN
        return evaluate_source(p.source, spec, device=device, dtypes=dtypes, timing_shapes=shapes,
                               executor=executor, provider=provider_name, record=False,
                               timeout_s=budget.timeout(settings.timeout_s),
                               parent=None if p.parent is None else p.parent.sha256,
                               verify_shapes=settings.verify_shapes)

    slots = max(1, len(getattr(executor, "slots", [None])))
    with concurrent.futures.ThreadPoolExecutor(slots, thread_name_prefix="kforge-generate") as pool:
        futures = [pool.submit(one, p) for p in proposals]
        for p, f in zip(proposals, futures):
            yield p, f.result()


# -- helpers -------------------------------------------------------------------------------------
def _should_stop(state: RunState, budget: Budget) -> str:
    best, settings = state.leader, state.settings
    if best and settings.target_speedup is not None and best.speedup >= settings.target_speedup:
        return f"target reached: {best.speedup:.2f}x over vendor >= {settings.target_speedup}x"
    if best and settings.target_fraction is not None and best.fraction is not None \
            and best.fraction >= settings.target_fraction:
        return f"target reached: {best.fraction:.0%} of the roofline >= {settings.target_fraction:.0%}"
    tokens = state.usage.input_tokens + state.usage.output_tokens
    if settings.max_tokens is not None and tokens >= settings.max_tokens:
        return f"token budget spent: {tokens} >= {settings.max_tokens}"
    if budget.spent():
        state.budget_stopped = True
        return budget.why()
    return ""


def _progress_line(state: RunState, what: str) -> str:
    best = state.leader
    if best is None:
        best_text = "no accepted kernel yet"
    elif state.best:  # a speedup only where something was recorded: never "best 0.00x" for nothing
        best_text = f"best {best.speedup:.2f}x vs vendor ({best.sha256[:12]})"
    else:
        best_text = "accepted, nothing recordable yet"
    usage = state.usage
    return (f"[{state.attempts} attempts, {state.accepted} accepted] {what} | {best_text}"
            + (f" | {usage.input_tokens + usage.output_tokens} tokens" if usage.input_tokens else ""))


def _seed(run_id: str, r: int, v: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{run_id}:{r}:{v}".encode()).digest()[:8], "little")


def _default_dtypes(spec: OpSpec) -> list:
    return [d for d in spec.dtypes if d != torch.float64]


def _gpu_name(fp: str) -> str:
    from kforge.device import DeviceFingerprint

    try:
        return DeviceFingerprint.parse(fp).name
    except ValueError:
        return fp


def _prior(v: Variant) -> "prompt.PriorVariant":
    m = min(v.measurements, key=lambda m: m.get("speedup_vs_vendor", 0.0)) if v.measurements else {}
    return prompt.PriorVariant(sha256=v.sha256, source=v.source, p50_us=m.get("candidate", {}).get("p50_us", 0.0),
                               speedup=v.speedup, roofline_fraction=v.fraction, shape=tuple(m.get("shape", ())),
                               dtype=m.get("dtype", ""))


def _learn(state: RunState, spec: OpSpec, fp: str, provider: Provider, say: Callable[[str], None]) -> None:
    """Append what this run measured to the op's knowledge file (the best variant, scoped), and,
    when the provider can write one (`Provider.reflects`), its reflection on the run."""
    best = state.leader
    if best is None or state.learned or not state.best:  # nothing measured at a recordable key: nothing learned
        return
    triton_version = installed_version("triton") or "none"
    entry = knowledge.record_run(spec.name, gpu=_gpu_name(fp), dtypes=state.dtypes, shapes=state.shapes,
                                 triton_version=triton_version, best=best, attempts=state.attempts,
                                 accepted=state.accepted)
    if provider.reflects:
        try:
            text = _reflect(state, spec, fp, provider, best, entry, triton_version)
        except ProviderError as exc:  # a reflection is a bonus: the run's results stand without it
            say(f"no reflection recorded: {exc}")
        else:
            knowledge.append(spec.name, dataclasses.replace(
                entry, title=f"Reflection ({provider.name}) on {entry.title}", text=prompt.truncate(text, 1500)))
    state.learned = True
    state.save()


def _reflect(state: RunState, spec: OpSpec, fp: str, provider: Provider, best: Variant, entry, triton_version: str) -> str:
    from kforge.gen.prompts import render

    failures = "\n".join(f"- {f.kind.value}: {prompt.truncate(f.message, 300)}" for f in state.feedback) or "- none"
    user = render("reflect", op=spec.name, gpu=_gpu_name(fp), triton=triton_version, dtypes=", ".join(state.dtypes),
                  shapes=entry.shapes, attempts=state.attempts, accepted=state.accepted, sha=best.sha256[:12],
                  speedup=f"{best.speedup:.2f}", measured=entry.measured or "(not timed)",
                  summary=knowledge.summary(best.source), failures=failures)
    completion = provider.complete([Message(Role.SYSTEM, render("reflect_system")), Message(Role.USER, user)])
    state.usage = state.usage + completion.usage
    return completion.text


def _best_per_key(table, fp: str, op: str) -> dict[str, KeyBefore]:
    """{key: what the router would pick there today (the fastest record)}."""
    best: dict[str, KeyBefore] = {}
    try:
        records = table.records(fp, op)
    except Exception:  # an unreadable table: nothing known before the run
        records = []
    for r in records:
        key = str(r.key)
        if key not in best or r.score_us < best[key].score_us:
            best[key] = KeyBefore(r.impl, r.p50_us, r.score_us)
    return best


def _result(state: RunState) -> RunResult:
    keys = []
    for key, found in sorted(state.best.items()):
        before = (state.before or {}).get(key)
        # After the run the key has: what it had, vendor as timed in this run, the run's best kernel
        # (first among equals: min keeps the first of equal times).
        options = [(found.impl, found.p50_us, found), ("vendor", found.vendor_p50_us, None)]
        options += [(before.impl, before.p50_us, None)] if before else []
        after = min(options, key=lambda o: o[1])
        keys.append({"key": key, "shape": found.shape, "dtype": found.dtype,
                     "before": before.to_json() if before else {"impl": "vendor (miss: not measured)", "p50_us": None},
                     "vendor_p50_us": found.vendor_p50_us,
                     "kernel": {"impl": found.impl, "p50_us": found.p50_us, "attempt_id": found.attempt_id},
                     "after": {"impl": after[0], "p50_us": after[1]},
                     "winning_attempt": found.attempt_id if after[2] is found else None})
    return RunResult(state.run_id, state.op, state.status, state.round, state.attempts, state.accepted,
                     state.leader if state.best else None, keys, state.usage, state.elapsed_s, recorded=state.recorded,
                     failure=failure(state, state.provider), failures=list(state.provider_errors),
                     budget_stopped=state.budget_stopped, unrecorded_keys=state.unrecorded_keys())
