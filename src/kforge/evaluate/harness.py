"""The evaluation harness: decide whether a candidate kernel may be trusted, and how fast it is.

    result = evaluate_source(source, "rms_norm", device="cuda", timing_shapes=[(32, 4096)])

1. static checks (`static.check_source`, AST) in this process: no code of the candidate runs here;
2. the source goes into the kernel store (content-addressed);
3. a sandboxed worker (`worker_tasks.evaluate_stored`, through an executor) loads it with its hash
   re-checked, proves it correct (`correctness.verify`: fp64 oracle, public and secret seeds and
   shapes, poisoned outputs, aliasing, input mutation, NaN propagation, determinism, replay), and
   times it with the vendor in the same run, checking the timed calls' own outputs;
4. back here: the worker's status (timeout, crash, killed: rejected as such), work that escaped the
   timed stream, and the roofline: a time under the floor is re-verified with new secret seeds in
   a new worker and rejected if it holds up again (nothing honest beats the device's own copy);
   a key whose candidate or vendor timing shows a stall (`evaluate.plausible`) is timed again in
   a new worker, and left out (in `skipped`, with the numbers) if it still does;
5. an accepted kernel gets a verdict in the store (`KernelStore.put_verdict`, HMAC-signed with this
   KFORGE_HOME's key; the Triton backend serves no stored kernel without one), and accepted
   results become score-table records (candidate and vendor, same run, so the router
   compares like with like); CPU timings are labelled "cpu_wall" and keyed to the CPU.
"""
from __future__ import annotations

import dataclasses
import secrets
from typing import Any, Iterable, Sequence

import torch

from kforge.device import fingerprint, installed_version
from kforge.evaluate import isolation, plausible, roofline, static
from kforge.evaluate.executors import Executor, LocalPoolExecutor, Task
from kforge.evaluate.sandbox import DEFAULT_CPU_MEMORY_MB, DEFAULT_GPU_RSS_MB
from kforge.evaluate.timing import Timing, escaped_stream
from kforge.ops import get_spec
from kforge.records import DispatchKey, Domain, Evidence, Record
from kforge.router.key import exact_indices, reaches
from kforge.router.table import ScoreTable
from kforge.specs import OpSpec
from kforge.store import KernelStore

TASK = "kforge.evaluate.worker_tasks:evaluate_stored"
TIMEOUT_S = 600.0  # one candidate's whole evaluation (the interpreter on a CPU is slow)
DEFAULT_SEEDS = (0, 1, 2)


@dataclasses.dataclass
class Measurement:
    shape: tuple[int, ...]
    dtype: str
    key: DispatchKey
    candidate: Timing
    vendor: Timing
    roofline: Any | None  # roofline.RooflineResult of the candidate

    @property
    def speedup(self) -> float:
        return self.vendor.p50_us / self.candidate.p50_us if self.candidate.p50_us > 0 else float("inf")

    def to_json(self) -> dict:
        out = {"shape": list(self.shape), "dtype": self.dtype, "key": str(self.key),
               "candidate": self.candidate.to_json(), "vendor": self.vendor.to_json(),
               "speedup_vs_vendor": self.speedup}
        if self.roofline is not None:
            out["roofline"] = dataclasses.asdict(self.roofline)
        return out


@dataclasses.dataclass
class Evaluation:
    """The verdict on one candidate: accepted, or rejected with the reason and the failing case."""

    op: str
    accepted: bool
    reason: str
    sha256: str | None = None
    impl: str | None = None
    check: str | None = None  # which rule rejected it (static rule, correctness check, worker status)
    error_types: tuple[str, ...] = ()  # "raised" or "worker:error": the exception's qualified type and its causes'
    case: str | None = None  # shape, dtype, seed, layout of the failing case
    evidence: Evidence | None = None
    domain: Domain = dataclasses.field(default_factory=Domain)  # the kernel's declared DOMAIN
    measurements: list[Measurement] = dataclasses.field(default_factory=list)
    skipped: list[dict] = dataclasses.field(default_factory=list)
    records: list[Record] = dataclasses.field(default_factory=list)  # an accepted kernel's, whether written or not
    recorded: bool = False  # the harness wrote `records` to the score table (record=True)
    phases: dict = dataclasses.field(default_factory=dict)  # the worker's load/verify/time seconds and cases

    @property
    def verdict(self) -> str:
        return "accepted" if self.accepted else "rejected"

    def to_json(self) -> dict:
        return {"op": self.op, "verdict": self.verdict, "reason": self.reason, "sha256": self.sha256,
                "impl": self.impl, "check": self.check, "case": self.case,
                "evidence": None if self.evidence is None else self.evidence.to_json(),
                "results": [m.to_json() for m in self.measurements], "skipped": self.skipped,
                "records_written": len(self.records) if self.recorded else 0, "phases": self.phases}


def impl_id(sha: str) -> str:
    return f"triton:{sha[:12]}"


def evaluate_source(source: str, op: str | OpSpec, *, device: str = "cpu", dtypes: Sequence[torch.dtype] | None = None,
                    timing_shapes: Iterable[Sequence[int]] | None = None, verify_shapes=None,
                    verify_sets: Sequence[str] | None = None,
                    seeds: Sequence[int] = DEFAULT_SEEDS, executor: Executor | None = None,
                    provider: str = "user", parent: str | None = None, attempt_id: str | None = None,
                    record: bool = True, table: ScoreTable | None = None, timeout_s: float = TIMEOUT_S) -> Evaluation:
    """Evaluate one candidate source for `op` (a name, or the spec its caller resolved once) on
    `device`; see the module docstring. Verified at `verify_shapes`, else at the shapes of
    `verify_sets`, else of the sets that fit the device; always also at every timing shape. An
    accepted kernel's records are in `.records`; they go to the score table only with `record`
    (the search writes the ones it picks itself)."""
    spec = op if isinstance(op, OpSpec) else get_spec(op)
    op = spec.name
    device_t = torch.device(device)
    dtypes = list(dtypes or [d for d in spec.dtypes if d != torch.float64])
    timing_shapes = [tuple(s) for s in (timing_shapes or spec.shapes("smoke"))]

    findings = static.check_source(source, spec)
    if findings:
        first = findings[0]
        return Evaluation(op, False, f"static check: {first}", check=f"static:{first.rule.value}")

    trusted = isolation.is_catalog_seed(source)
    isolation.require(trusted, f"candidate kernels for op {op!r}")  # refused before anything is stored
    stored = KernelStore().put(source, op=op, provider=provider, parent=parent, attempt_id=attempt_id)
    impl = impl_id(stored.sha256)
    # The worker gets the source itself (it cannot see the store) and a memory limit always.
    memory_mb = DEFAULT_GPU_RSS_MB if device_t.type == "cuda" else DEFAULT_CPU_MEMORY_MB
    payload = {"op": op, "sha256": stored.sha256, "source": source, "device": str(device_t),
               "dtypes": [str(d).removeprefix("torch.") for d in dtypes], "seeds": list(seeds),
               "timing_shapes": [list(s) for s in timing_shapes],
               "verify_shapes": None if verify_shapes is None else [list(s) for s in verify_shapes],
               "verify_sets": None if verify_sets is None else list(verify_sets)}
    own_executor = executor is None
    executor = executor or LocalPoolExecutor()
    try:
        return _evaluate(spec, source, stored, impl, payload, executor, timeout_s, memory_mb, trusted, device_t,
                         provider, attempt_id, record, table)
    finally:
        if own_executor:
            executor.close()  # its spare workers, if any, go with it


def _evaluate(spec: OpSpec, source: str, stored, impl: str, payload: dict, executor: Executor, timeout_s: float,
              memory_mb: int, trusted: bool, device_t: torch.device, provider: str, attempt_id: str | None,
              record: bool, table: ScoreTable | None) -> Evaluation:
    op = spec.name

    def run_worker() -> tuple[Evaluation | None, dict | None]:
        seed = secrets.randbits(62)
        task = Task(TASK, {**payload, "secret_seed": seed}, timeout_s=timeout_s, memory_mb=memory_mb,
                    secrets={"secret seed": str(seed)}, trusted=trusted)
        (outcome,) = executor.map([task])
        if not outcome.ok:
            detail = outcome.error or f"exit code {outcome.exit_code}"
            return Evaluation(op, False, f"worker {outcome.status.value}: {detail}", stored.sha256, impl,
                              check=f"worker:{outcome.status.value}", error_types=outcome.error_types), None
        return None, outcome.value

    def judged() -> Evaluation:
        failed, value = run_worker()
        return failed if failed is not None else _judge(spec, value, stored.sha256, impl, device_t)

    failed, value = run_worker()
    if failed is not None:
        return failed
    evaluation = _judge(spec, value, stored.sha256, impl, device_t)
    phases = value.get("phases")  # the worker's own account: numbers only, for reports
    evaluation.phases = {k: v for k, v in phases.items() if isinstance(k, str) and isinstance(v, (int, float))
                         and not isinstance(v, bool)} if isinstance(phases, dict) else {}
    if evaluation.accepted and any(_beats_floor(m) for m in evaluation.measurements):
        evaluation = judged()  # new secret seeds, new inputs, new process
        if evaluation.accepted and any(_beats_floor(m) for m in evaluation.measurements):
            m = next(m for m in evaluation.measurements if _beats_floor(m))
            return Evaluation(op, False, f"faster than the roofline floor twice ({m.candidate.p50_us:.2f} us against a "
                              f"floor of {m.roofline.floor_us:.2f} us at {m.key}): not a real result", stored.sha256,
                              impl, check="roofline", case=f"shape {m.shape} {m.dtype}")
    if evaluation.accepted and any(_stalled(m) for m in evaluation.measurements):
        evaluation = _without_stalls(judged(), evaluation.phases)  # timed again once, in a new worker
    if evaluation.accepted:  # the verdict the Triton backend requires before it serves this kernel
        KernelStore().put_verdict(stored.sha256, op, str(fingerprint(device_t)), {
            "provider": provider, "attempt_id": attempt_id,
            "evidence": None if evaluation.evidence is None else evaluation.evidence.to_json()})
    if evaluation.accepted:
        evaluation.records = _records(spec, evaluation, stored.sha256, provider, attempt_id, device_t)
    if evaluation.accepted and record:
        (table or ScoreTable()).write(evaluation.records)
        evaluation.recorded = True
    return evaluation


def _stalled(m: Measurement) -> list:
    """The implausible timings (`evaluate.plausible`) of one key's candidate and vendor."""
    floor = m.roofline.floor_us if m.roofline is not None else None
    return plausible.check({"candidate": m.candidate, "vendor": m.vendor}, floor)


def _without_stalls(evaluation: Evaluation, phases: dict) -> Evaluation:
    """A re-timed evaluation with the keys whose timings still look stalled moved to `skipped`
    (with the numbers): no record is made of them, the others stand."""
    evaluation.phases = phases
    if not evaluation.accepted:
        return evaluation
    kept = []
    for m in evaluation.measurements:
        found = _stalled(m)
        if found:
            evaluation.skipped.append({"shape": list(m.shape), "dtype": m.dtype, "why": (
                f"implausible timing at {m.key}, refused after one re-timing: " + "; ".join(map(str, found)))})
        else:
            kept.append(m)
    evaluation.measurements = kept
    return evaluation


def _beats_floor(m: Measurement) -> bool:
    return m.roofline is not None and roofline.implausible(m.candidate.p50_us, m.roofline.floor_us)


def _judge(spec: OpSpec, value: dict, sha: str, impl: str, device: torch.device) -> Evaluation:
    v = value["verdict"]
    if not v["accepted"]:
        return Evaluation(spec.name, False, v["reason"], sha, impl, check=v["check"], case=v["case"],
                          error_types=tuple(v.get("error_types", ())))
    evidence = Evidence.from_json(v["evidence"])
    fp = str(fingerprint(device))
    ceilings = roofline.ceilings(device)
    measurements = []
    for row in value["timings"]:
        timings = {name: Timing(**t) for name, t in row["timings"].items()}
        cand, vendor = timings["candidate"], timings["vendor"]
        if escaped_stream(cand):
            return Evaluation(spec.name, False, f"work escaped the timed stream: {cand.wall_us:.1f} us per call "
                              f"synchronized against {cand.p50_us:.1f} us by events", sha, impl,
                              check="escaped_stream", case=f"shape {row['shape']} {row['dtype']}")
        problem = tuple(row["problem"])
        dtype = getattr(torch, row["dtype"])
        result = None
        if ceilings is not None and cand.p50_us > 0:
            result = roofline.classify(spec.bytes_moved(problem, dtype), spec.flops(problem, dtype), cand.p50_us, ceilings)
        key = DispatchKey(spec.name, fp, row["dtypes"], problem)
        measurements.append(Measurement(tuple(row["shape"]), row["dtype"], key, cand, vendor, result))
    return Evaluation(spec.name, True, "", sha, impl, evidence=evidence, measurements=measurements,
                      skipped=value.get("skipped", []), domain=Domain.from_json(value.get("domain", {})))


def _records(spec: OpSpec, evaluation: Evaluation, sha: str, provider: str, attempt_id: str | None,
             device: torch.device) -> list[Record]:
    # The kernel's own DOMAIN as the worker read it; the Triton backend re-checks at load that a
    # record never claims more than the kernel declares.
    kernel_domain = evaluation.domain
    versions = {"torch": torch.__version__, "triton": installed_version("triton") or "none",
                "kforge": installed_version("kforge") or "dev",
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    out = []
    for m in evaluation.measurements:
        evidence = evaluation.evidence
        exact_idx = exact_indices(spec)
        if not (evidence.covers(m.key, exact_idx) and reaches(m.key.shape, evidence.shapes, exact_idx)):
            continue  # timed but not verified at this shape: no record (the router would not serve it)
        for impl, backend, t, domain, src in ((evaluation.impl, "triton", m.candidate, kernel_domain, sha),
                                              ("vendor", "vendor", m.vendor, Domain(), None)):
            r = m.roofline if impl != "vendor" else None
            out.append(Record(key=m.key, impl=impl, backend=backend, p20_us=t.p20_us, p50_us=t.p50_us,
                              p80_us=t.p80_us, host_us=t.host_us, timing=t.kind, evidence=evidence, domain=domain,
                              gbps=None if r is None else r.gbps, tflops=None if r is None else r.tflops,
                              ceiling_fraction=None if r is None else r.fraction_of_ceiling,
                              source_sha256=src, provider=provider if src else "builtin",
                              attempt_id=attempt_id if src else None, versions=versions))
    return out
