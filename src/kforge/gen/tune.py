"""`kforge tune`: extend the implementations kforge already has to new keys, with no model provider.

    report = tune([TuneKey("rms_norm", torch.bfloat16, (17, 3584))], device="cuda")

For the keys of one op (grouped by dtype) it runs, in this order, each step recorded as it ends:
  1. vendor and Inductor calibrated at every key (`evaluate.calibrate`: built-in code, this process);
  2. every catalog seed of the op, then every stored kernel of the op with a verdict (the tunables
     earlier runs found), each through the full harness in a sandboxed worker that verifies it at
     all the group's keys (exactly those keys, plus the op's smoke, odd and edge sets and secret
     shapes) and times it there with vendor in the same run.
Where the executor has several GPUs (`Executor.timing_slots`), every group is calibrated first and
then the candidates run one per GPU at once; elsewhere each group's candidates follow its
calibrations, one at a time. A worker over its device-memory cap is run again at the smaller half
of the keys. Sources are deduplicated by content hash. `max_seconds` is honoured between steps: what is done is
kept (written to the table), the rest reported as not run. Generated code never runs here: the
harness's workers run it; this process writes the table.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import threading
import time
from typing import Callable, Iterable, Sequence

import torch

from kforge.catalog import seeds
from kforge.device import fingerprint
from kforge.evaluate.sandbox import DEVICE_MEMORY_CAP
from kforge.ops import get_spec
from kforge.records import CallInfo, Record
from kforge.router.key import call_info
from kforge.router.policy import rank
from kforge.router.table import ScoreTable
from kforge.specs import OpSpec
from kforge.store import KernelStore, sha256_of

VERIFY_SETS = ("smoke", "odd", "edge")  # verified besides the tuned keys themselves (and secret shapes)
OUT_OF_DEVICE_MEMORY = f"over {DEVICE_MEMORY_CAP}"
MIN_WORKER_S = 30.0  # a candidate started near the budget's end still gets this long


@dataclasses.dataclass(frozen=True)
class TuneKey:
    """One key to tune: the op, the primary input's dtype and shape (as `spec.make_inputs` takes it)."""

    op: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.op} {str(self.dtype).removeprefix('torch.')} {'x'.join(map(str, self.shape))}"

    def to_json(self) -> dict:
        return {"op": self.op, "dtype": str(self.dtype).removeprefix("torch."), "shape": list(self.shape)}


@dataclasses.dataclass
class KeyOutcome:
    key: TuneKey
    problem: tuple[int, ...] | None = None  # the dispatch key's shape
    routed: str | None = None  # what the router now serves here
    routed_us: float | None = None  # its score (p50 plus host cost)
    vendor_us: float | None = None
    recorded: list[str] = dataclasses.field(default_factory=list)  # impls with a record written here this run
    reason: str | None = None  # why nothing (or nothing but vendor) was recorded
    calibrate_s: float = 0.0  # vendor and Inductor verified and timed here (Inductor's compile included)

    def to_json(self) -> dict:
        return {**self.key.to_json(), "problem": None if self.problem is None else list(self.problem),
                "calibrate_s": round(self.calibrate_s, 3),
                "routed": self.routed, "routed_us": self.routed_us, "vendor_us": self.vendor_us,
                "speedup_vs_vendor": (self.vendor_us / self.routed_us if self.vendor_us and self.routed_us else None),
                "recorded": self.recorded, "reason": self.reason}


@dataclasses.dataclass
class CandidateOutcome:
    op: str
    dtype: str
    impl: str
    origin: str  # "catalog:<file>" or "store"
    verdict: str  # accepted, rejected, not run or not finished (time budget), duplicate
    reason: str = ""
    seconds: float = 0.0  # the whole evaluation, worker start included
    keys: int = 0  # the keys it was verified and timed at, in one worker
    phases: dict = dataclasses.field(default_factory=dict)  # inside the worker: load, verify, time

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TuneReport:
    device: str
    keys: list[KeyOutcome]
    candidates: list[CandidateOutcome]
    seconds: float
    stopped: str | None = None  # why the run ended early (the time budget), None when it ran to the end

    @property
    def missing(self) -> list[KeyOutcome]:
        """Keys that got no record at all this run."""
        return [k for k in self.keys if not k.recorded]

    def to_json(self) -> dict:
        return {"device": self.device, "seconds": round(self.seconds, 2), "stopped": self.stopped,
                "keys": [k.to_json() for k in self.keys], "candidates": [c.to_json() for c in self.candidates]}


def sources_for(spec: OpSpec, store: KernelStore | None = None) -> list[tuple[str, str, str]]:
    """(source, provider, origin) of every seed of the op, then of every stored kernel of the op
    with a verdict of this kforge, without repeats (by content hash)."""
    store = store or KernelStore()
    out, seen = [], set()
    for path in seeds(spec):
        source = path.read_text()
        seen.add(sha256_of(source))
        out.append((source, "catalog", f"catalog:{path.name}"))
    for kernel in store.list(spec.name):
        if kernel.sha256 in seen or store.verdict_problem(kernel.sha256, spec.name) is not None:
            continue
        seen.add(kernel.sha256)
        out.append((kernel.source(), kernel.provider, "store"))
    return out


def keys_from_misses(device: str, *, limit: int | None = None, ops: Sequence[str] | None = None,
                     table: ScoreTable | None = None) -> list[TuneKey]:
    """The keys `device`'s miss log holds that the table does not serve yet (most called first, at
    most `limit`, of `ops` when given); ops this process cannot resolve (a user op no longer
    persisted) are left out."""
    from kforge.gen.from_misses import outstanding, spec_of

    fp = str(fingerprint(torch.device(device)))
    out = []
    for entry in outstanding(fp, table):
        spec = spec_of(entry["op"])
        if spec is None or (ops is not None and entry["op"] not in ops):
            continue
        dtype = getattr(torch, entry["dtypes"].split(",")[0], None)
        if isinstance(dtype, torch.dtype):
            out.append(TuneKey(spec.name, dtype, tuple(spec.shape_for(tuple(entry["shape"])))))
    out = list(dict.fromkeys(out))
    return out[:limit] if limit is not None else out


class _Budget:
    def __init__(self, max_seconds: float | None):
        self.started = time.monotonic()
        self.max_seconds = max_seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def spent(self) -> bool:
        return self.max_seconds is not None and self.elapsed() >= self.max_seconds

    def worker_timeout(self, default: float) -> float:
        if self.max_seconds is None:
            return default
        return min(default, max(self.max_seconds - self.elapsed(), MIN_WORKER_S))


def tune(keys: Iterable[TuneKey], *, device: str = "cpu", inductor: bool = True, candidates: bool = True,
         record: bool = True, max_seconds: float | None = None, executor=None, table: ScoreTable | None = None,
         on_progress: Callable[[str], None] | None = None) -> TuneReport:
    """Calibrate, verify and time the known implementations at `keys` on `device`; see the module
    docstring. Returns per key what the router now serves there and why a key got no record.
    Without `executor`, one `LocalPoolExecutor` serves the whole run (its spare workers start ahead
    of each candidate) and is closed at the end."""
    if executor is not None:
        return _tune(keys, device, inductor, candidates, record, max_seconds, executor, table, on_progress)
    from kforge.evaluate.executors import LocalPoolExecutor

    with LocalPoolExecutor() as own:
        return _tune(keys, device, inductor, candidates, record, max_seconds, own, table, on_progress)


def _tune(keys, device, inductor, candidates, record, max_seconds, executor, table, on_progress) -> TuneReport:
    from kforge.evaluate.calibrate import ImplausibleTiming, calibrate
    from kforge.evaluate.harness import TIMEOUT_S, evaluate_source

    say = on_progress or (lambda message: None)
    table = table or ScoreTable()
    budget = _Budget(max_seconds)
    keys = list(dict.fromkeys(keys))
    outcomes = {k: KeyOutcome(k) for k in keys}
    groups: dict[tuple[str, torch.dtype], list[TuneKey]] = {}
    for k in keys:
        groups.setdefault((k.op, k.dtype), []).append(k)
    plans = {}
    for (op, dtype), group in groups.items():
        spec = get_spec(op)
        plans[(op, dtype)] = (spec, sources_for(spec) if candidates else [])
    steps = len(keys) + sum(len(s) for _, s in plans.values())
    done, stopped, results = 0, None, []
    backends = ("vendor", "inductor") if inductor else ("vendor",)

    def stop_now() -> bool:
        nonlocal stopped
        if stopped is None and budget.spent():
            stopped = f"time budget spent: {budget.elapsed():.0f} s >= {max_seconds:.0f} s"
        return stopped is not None

    too_big: set[TuneKey] = set()
    fp = str(fingerprint(torch.device(device)))
    calls = {k: _call(k, device, fp) for k in keys}
    lock = threading.Lock()  # candidates run from several threads where the executor has several GPUs
    slots = executor.timing_slots() if candidates else 1
    deferred: list[tuple] = []

    def step(message: str) -> None:
        nonlocal done
        with lock:
            done += 1
            say(f"[{done}/{steps}] {message}")

    def run_candidate(op: str, dtype: torch.dtype, spec: OpSpec, group: list[TuneKey], source: str, provider: str,
                      origin: str) -> CandidateOutcome:
        name = f"triton:{sha256_of(source)[:12]}"
        with lock:
            if stop_now():
                return CandidateOutcome(op, _name(dtype), name, origin, "not run", stopped)
        step(f"{op} {_name(dtype)}: {name} ({origin}) at {len(group)} key(s) in a sandboxed worker")
        t0, here = time.monotonic(), group
        while True:
            result = evaluate_source(source, spec, device=device, dtypes=[dtype], timing_shapes=[k.shape for k in here],
                                     verify_sets=VERIFY_SETS, executor=executor, provider=provider,
                                     record=record, table=table, timeout_s=budget.worker_timeout(TIMEOUT_S))
            if result.accepted or OUT_OF_DEVICE_MEMORY not in result.reason or len(here) < 2 or budget.spent():
                break
            # The verifier's copies of the biggest keys did not fit the worker's cap (cross_entropy
            # at 16384 tokens): again at the smaller half; the others stay unrecorded for it.
            here = sorted(here, key=lambda k: (math.prod(k.shape), k.shape))[:len(here) // 2]
            say(f"    a worker ran {OUT_OF_DEVICE_MEMORY}: again at the {len(here)} smallest key(s)")
        seconds = time.monotonic() - t0
        verdict, reason = result.verdict, result.reason
        if not result.accepted and budget.spent() and "timeout" in reason:  # cut short, not judged
            verdict, reason = "not finished", f"time budget spent while it ran ({reason})"
        elif result.accepted and len(here) < len(group):
            reason = f"verified at the {len(here)} smallest of {len(group)} keys: the worker ran out of " \
                     f"device memory verifying the larger ones"
        with lock:
            if result.recorded:
                written = {r.key for r in result.records if r.impl != "vendor"}
                for k in here:
                    if calls[k].key in written:
                        outcomes[k].recorded.append(name)
            say(f"    {name} {verdict}{'' if result.accepted else ': ' + reason} ({seconds:.1f} s)")
        return CandidateOutcome(op, _name(dtype), name, origin, verdict, reason, seconds, len(here), result.phases)

    if candidates:
        executor.warm_up(trusted=True)  # the first candidate is a seed: its worker imports while vendor is timed
    for (op, dtype), group in groups.items():
        spec, sources = plans[(op, dtype)]
        for k in group:
            if stop_now():
                break
            step(f"{k}: calibrating {', '.join(backends)}")
            t0 = time.monotonic()
            try:
                records = calibrate(spec, k.shape, dtype, device, backends=backends)
            except ImplausibleTiming as exc:  # timed twice, stalled twice: nothing of it is recorded
                outcomes[k].reason = str(exc)
                say(f"    {exc}")
                continue
            except torch.OutOfMemoryError as exc:  # the reference's fp64 copies do not fit: this key only
                too_big.add(k)
                outcomes[k].reason = f"out of device memory verifying vendor here ({_first_line(exc)})"
                say(f"    {outcomes[k].reason}; left out of this run")
                continue
            finally:
                outcomes[k].calibrate_s = time.monotonic() - t0
                _release_cache(device)  # what this process keeps cached, a worker on the GPU cannot have
            _note(outcomes[k], records, record, table)
        group = [k for k in group if k not in too_big]  # a worker would run out of memory there too
        jobs = [(op, dtype, spec, group, *source) for source in sources] if group else []
        if slots > 1:  # after every calibration: the coordinator times on a GPU the workers use
            deferred += jobs
        else:
            results += [run_candidate(*job) for job in jobs]
    if deferred:  # one candidate per GPU at a time (the executor hands each task a free GPU)
        with concurrent.futures.ThreadPoolExecutor(slots, thread_name_prefix="kforge-tune") as pool:
            results += list(pool.map(lambda job: run_candidate(*job), deferred))
    for k, outcome in outcomes.items():
        _routed(outcome, calls[k], table)
        if not outcome.recorded and outcome.reason is None:
            outcome.reason = stopped or "no implementation passed verification at this key"
    return TuneReport(str(device), list(outcomes.values()), results, budget.elapsed(), stopped)


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]


def _release_cache(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _call(k: TuneKey, device: str, fp: str) -> CallInfo:
    """The router's view of a contiguous call at `k` (inputs made once on `device`, then freed)."""
    spec = get_spec(k.op)
    return call_info(spec, spec.make_inputs(k.shape, k.dtype, device, 0), fp)


def _note(outcome: KeyOutcome, records: Sequence[Record], record: bool, table: ScoreTable) -> None:
    if record and records:
        table.write(records)
        outcome.recorded += [r.impl for r in records]
    elif not records:
        outcome.reason = "vendor and inductor failed verification here (see the warnings)"


def _routed(outcome: KeyOutcome, call: CallInfo, table: ScoreTable) -> None:
    """What the router serves at the outcome's key now, from the table as written."""
    spec = get_spec(outcome.key.op)
    outcome.problem = call.key.shape
    ranking = rank(spec, table.records(call.key.device, spec.name), call)
    if ranking.eligible:
        best = ranking.eligible[0]
        outcome.routed, outcome.routed_us = best.impl, best.score_us
    vendor = [r for r in ranking.eligible if r.impl == "vendor"]
    outcome.vendor_us = vendor[0].score_us if vendor else None
