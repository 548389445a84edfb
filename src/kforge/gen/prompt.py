"""The messages sent to an LLM provider for one candidate, rendered from `kforge/gen/prompts/*.md`.

    messages = build_messages(spec, device=str(fp), ceilings=roofline.ceilings(dev),
                              triton_version="3.9.0", dtypes=[torch.bfloat16], shapes=[(32, 4096)],
                              knowledge=knowledge.relevant(knowledge.load(op), str(fp), dtypes, "3.9.0"),
                              priors=[...], feedback=[feedback_from_evaluation(ev)], parent_source=src,
                              evolve=True)

Two messages: the system message (who the model is, the candidate contract, what the static
checker rejects, what the verifier checks) and the task (the op's schema and reference source, the
target shapes and dtypes with bytes, FLOPs, roofline floor and error floor, the device and its
measured ceilings, the Triton version and its caveats, knowledge entries, the best prior variants,
feedback from recent failures, and what to write: a new file, an improved file, or a new
EVOLVE-BLOCK region of the parent). Python here formats data only; the prose is in the templates.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import inspect
import textwrap
from typing import Any, Iterable, Sequence

import torch

from kforge.errors import KforgeError
from kforge.evaluate import static
from kforge.gen.extract import EVOLVE_END, EVOLVE_START, ExtractionError, Extracted, evolve_region
from kforge.gen.knowledge import Entry, major_minor
from kforge.gen.prompts import load_json, render
from kforge.gen.types import Message, Role
from kforge.specs import OpSpec

MAX_PRIOR_SOURCES = 2  # full sources of the best distinct variants; the rest appear in the table only
MAX_FEEDBACK = 6  # newest feedback items rendered
MAX_FEEDBACK_CHARS = 2000  # per item: compile errors and tracebacks are long, their ends matter most


class FeedbackKind(str, enum.Enum):
    FORMAT = "format"  # no usable code in the answer
    STATIC = "static"  # rejected by the static checker
    COMPILE = "compile"  # failed to import, compile or launch
    CORRECTNESS = "correctness"  # ran, gave wrong results (or broke a verifier rule)
    TIMING = "timing"  # correct; how fast, against vendor and the roofline
    OTHER = "other"  # timeouts, crashes, anything else


@dataclasses.dataclass(frozen=True)
class PriorVariant:
    """One measured variant of the op on this device: its source, and its time at one shape."""

    sha256: str
    source: str
    p50_us: float
    speedup: float  # vendor p50 / this p50
    roofline_fraction: float | None  # floor / p50; None without ceilings
    shape: tuple[int, ...]
    dtype: str  # torch dtype name, "bfloat16"


@dataclasses.dataclass(frozen=True)
class Feedback:
    kind: FeedbackKind
    message: str
    case: str | None = None  # the failing case: shape, dtype, seed, layout

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", FeedbackKind(self.kind))


def truncate(text: str, limit: int = MAX_FEEDBACK_CHARS) -> str:
    """`text` cut to about `limit` characters, keeping its head (what failed) and its tail (the
    innermost error of a traceback), with the cut marked."""
    text = text.strip()
    if len(text) <= limit:
        return text
    head = limit // 3
    tail = limit - head
    return f"{text[:head].rstrip()}\n[... {len(text) - head - tail} characters cut ...]\n{text[-tail:].lstrip()}"


# -- feedback from an evaluation or an unusable answer ---------------------------------------------
# Exception types (by class name, any module) that mean the kernel failed to import, compile or
# launch; the evaluation carries the raised exception's type and its causes' (`error_types`).
_COMPILE_ERRORS = frozenset({"CompilationError", "InterpreterError", "OutOfResources", "SyntaxError", "NameError",
                             "CandidateImportError"})


def _correctness_checks() -> frozenset[str]:
    from kforge.evaluate.correctness import Check

    return frozenset(c.value for c in Check) | {"timed_output"}


def _compile_failure(error_types: Sequence[str]) -> bool:
    return any(t.rpartition(".")[2] in _COMPILE_ERRORS or t.startswith("triton.compiler.") for t in error_types)


def _feedback_kind(check: str | None, error_types: Sequence[str]) -> FeedbackKind:
    check = check or ""
    compileish = _compile_failure(error_types)
    if check.startswith("static:"):
        return FeedbackKind.STATIC
    if check == "raised" or check == "worker:error":
        return FeedbackKind.COMPILE if compileish else FeedbackKind.OTHER
    if check in ("roofline", "escaped_stream"):
        return FeedbackKind.TIMING
    if check in _correctness_checks():
        return FeedbackKind.CORRECTNESS
    return FeedbackKind.OTHER


def _shape(shape: Iterable[int]) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


def feedback_from_evaluation(evaluation) -> Feedback:
    """Feedback from a `kforge.evaluate.harness.Evaluation`: a rejection becomes the check that
    failed with its reason (compile error text, first mismatching index and values) and case; an
    accepted kernel becomes TIMING feedback, each timed shape against vendor and the roofline."""
    if not evaluation.accepted:
        reason = evaluation.reason or "rejected without a reason"
        message = f"{evaluation.check}: {reason}" if evaluation.check else reason
        return Feedback(_feedback_kind(evaluation.check, evaluation.error_types), truncate(message), evaluation.case)
    if not evaluation.measurements:
        skipped = "; ".join(f"{_shape(s['shape'])} {s['dtype']}: {s['why']}" for s in evaluation.skipped) or "none"
        return Feedback(FeedbackKind.TIMING, truncate(render("feedback_untimed", skipped=skipped)))
    lines = []
    for m in evaluation.measurements:
        r = m.roofline
        lines.append(render("feedback_timing_line", shape=_shape(m.shape), dtype=m.dtype,
                            p50_us=f"{m.candidate.p50_us:.2f}", vendor_us=f"{m.vendor.p50_us:.2f}",
                            speedup=f"{m.speedup:.2f}", bound=None if r is None else r.bound,
                            fraction=None if r is None else f"{r.fraction_of_ceiling:.0%}",
                            floor_us=None if r is None else f"{r.floor_us:.2f}",
                            gbps=None if r is None else f"{r.gbps:.0f}"))
    return Feedback(FeedbackKind.TIMING, truncate(render("feedback_timing", lines="\n".join(lines))))


def feedback_from_answer(problem: ExtractionError | Extracted | Sequence[static.Finding]) -> Feedback:
    """Feedback from an answer that gave no usable source (FORMAT) or failed static checks (STATIC)."""
    if isinstance(problem, ExtractionError):
        return Feedback(FeedbackKind.FORMAT, truncate(str(problem)))
    findings = problem.findings if isinstance(problem, Extracted) else tuple(problem)
    if not findings:
        raise ValueError("feedback_from_answer: the answer has no findings")
    return Feedback(FeedbackKind.STATIC, truncate("\n".join(str(f) for f in findings)))


# -- formatting helpers ----------------------------------------------------------------------------
def _fence(*texts: str) -> str:
    """A backtick fence longer than any backtick run in `texts`."""
    longest = max((len(run) for t in texts for run in _backtick_runs(t)), default=0)
    return "`" * max(3, longest + 1)


def _backtick_runs(text: str) -> list[str]:
    runs, current = [], ""
    for ch in text:
        if ch == "`":
            current += ch
        elif current:
            runs.append(current)
            current = ""
    return runs + ([current] if current else [])


def _code(names: Iterable[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def _dtype(d) -> torch.dtype:
    if isinstance(d, torch.dtype):
        return d
    found = getattr(torch, str(d).removeprefix("torch."), None)
    if not isinstance(found, torch.dtype):
        raise KforgeError(f"not a torch dtype: {d!r}")
    return found


def _dtype_name(d: torch.dtype) -> str:
    return str(d).removeprefix("torch.")


@functools.lru_cache(maxsize=256)
def _problem(spec: OpSpec, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[int, ...] | None:
    """The op's problem dims at `shape`, from fake tensors (no memory, no compute); None when the
    op's input factory cannot run on them."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    try:
        with FakeTensorMode():
            return tuple(int(d) for d in spec.problem(spec.make_inputs(shape, dtype, "cpu", 0)))
    except (RuntimeError, TypeError, ValueError, NotImplementedError):
        return None


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def _target_rows(spec: OpSpec, shapes, dtypes, ceilings) -> str:
    from kforge.evaluate import roofline

    rows = []
    for shape in shapes:
        for dtype in dtypes:
            problem = _problem(spec, tuple(shape), dtype)
            if problem is None:
                rows.append(f"| {_shape(shape)} | ? | {_dtype_name(dtype)} | ? | ? | ? | ? | ? |")
                continue
            nbytes, flops = spec.bytes_moved(problem, dtype), spec.flops(problem, dtype)
            floor = "n/a" if ceilings is None else f"{roofline.floor_us(nbytes, flops, ceilings):.2f}"
            tol = spec.tolerance(dtype, problem)
            dims = ", ".join(f"{n}={v}" for n, v in zip(spec.problem_dims, problem))
            rows.append(f"| {_shape(shape)} | {dims} | {_dtype_name(dtype)} | {_si(nbytes)} | {_si(flops)} | {floor} "
                        f"| {tol.atol:.2e} | {tol.rtol:.2e} |")
    return "\n".join(rows)


def _signature(spec: OpSpec) -> str:
    params = [f"{n}={spec.defaults[n]!r}" if n in spec.defaults else n for n in spec.arg_names]
    return f"forward({', '.join(params)})"


def _reference_source(spec: OpSpec) -> tuple[str, str]:
    """(the reference function's source, preceded by the sources of the helper functions it
    calls from its own module or kforge.specs, e.g. `accumulate_dtype`; its module's docstring)."""
    if spec.reference_source is not None:
        return spec.reference_source, ""
    module = inspect.getmodule(spec.reference)
    ordered: list = []

    def visit(fn) -> None:
        if fn in ordered:
            return
        for name in fn.__code__.co_names:
            helper = fn.__globals__.get(name)
            if (inspect.isfunction(helper) and helper is not fn and module is not None
                    and (helper.__module__ == module.__name__ or helper.__module__.startswith("kforge.specs"))):
                visit(helper)
        ordered.append(fn)

    visit(spec.reference)
    try:
        sources = [textwrap.dedent(inspect.getsource(fn)).rstrip("\n") for fn in ordered]
    except (OSError, TypeError) as exc:
        raise KforgeError(f"cannot read the reference source of op {spec.name!r}: {exc}") from None
    doc = inspect.getdoc(module) if module is not None else None
    return "\n\n\n".join(sources), doc or ""


def _device_section(device: str, ceilings) -> str:
    if ceilings is None:
        return render("ceilings_none", device=device)
    return render("ceilings", device=device, kind=ceilings.kind, measured_at=ceilings.measured_at,
                  copy_gbps=f"{ceilings.copy_gbps:.0f}", matmul_tflops=f"{ceilings.matmul_tflops:.1f}",
                  matmul_dtype=ceilings.matmul_dtype)


def _caveats() -> tuple[str, str]:
    data = load_json("triton_versions")
    lines = [render("caveat", api=c["api"], versions=c["versions"], text=c["text"]) for c in data["caveats"]]
    return ", ".join(data["portable"]), "\n".join(lines)


def _knowledge_section(entries: Sequence[Entry], triton_version: str) -> str | None:
    if not entries:
        return None
    rendered = []
    for e in entries:
        unverified = e.unverified(triton_version)
        rendered.append(render("knowledge_entry", outcome=e.outcome.value, title=e.title,
                               recorded_triton=", ".join(e.triton) if unverified else None,
                               installed_triton=major_minor(triton_version), gpu=e.gpu,
                               dtype=", ".join(e.dtypes) or "any", shapes=e.shapes,
                               triton=", ".join(e.triton) or "any", measured=e.measured, text=e.text))
    return render("knowledge", entries="\n\n".join(rendered))


def _priors_section(priors: Sequence[PriorVariant], parent_sha: str | None) -> str | None:
    if not priors:
        return None
    ordered = sorted(priors, key=lambda p: -p.speedup)
    rows = [f"| {p.sha256[:12]} | {_shape(p.shape)} | {p.dtype} | {p.p50_us:.2f} | {p.speedup:.2f}x | "
            f"{'n/a' if p.roofline_fraction is None else f'{p.roofline_fraction:.0%}'} |" for p in ordered]
    sources, shown = [], set()
    for p in ordered:
        if len(shown) >= MAX_PRIOR_SOURCES:
            break
        if p.sha256 in shown or p.sha256 == parent_sha:
            continue
        shown.add(p.sha256)
        sources.append(render("prior_source", sha=p.sha256[:12], p50_us=f"{p.p50_us:.2f}", shape=_shape(p.shape),
                              dtype=p.dtype, speedup=f"{p.speedup:.2f}", fence=_fence(p.source),
                              source=p.source.rstrip("\n")))
    return render("priors", rows="\n".join(rows), sources="\n\n".join(sources))


def _feedback_section(feedback: Sequence[Feedback]) -> str | None:
    if not feedback:
        return None
    items = [render("feedback_item", kind=f.kind.value, case=f.case, fence=_fence(f.message),
                    message=truncate(f.message)) for f in list(feedback)[-MAX_FEEDBACK:]]
    return render("feedback", items="\n\n".join(items))


def _ask(spec: OpSpec, parent_source: str | None, evolve: bool) -> str:
    if parent_source is None:
        return render("ask_new", op=spec.name)
    parent_sha = hashlib.sha256(parent_source.encode()).hexdigest()[:12]
    span = evolve_region(parent_source) if evolve else None
    if span is None:  # no region to evolve: improve the whole file
        return render("ask_improve", op=spec.name, parent_sha=parent_sha, fence=_fence(parent_source),
                      parent_source=parent_source.rstrip("\n"))
    line_start = parent_source.rfind("\n", 0, span[0] - 1) + 1
    line_end = parent_source.find("\n", span[1])
    region = parent_source[line_start:len(parent_source) if line_end < 0 else line_end]  # marker lines included
    return render("ask_evolve", op=spec.name, parent_sha=parent_sha, fence=_fence(parent_source),
                  parent_source=parent_source.rstrip("\n"), region=region, start_marker=EVOLVE_START,
                  end_marker=EVOLVE_END)


def system_message() -> Message:
    """The system message: the same for every op (the contract and the rules)."""
    return Message(Role.SYSTEM, render(
        "system", allowed_imports=_code(static.ALLOWED_IMPORTS), torch_allowed=_code(sorted(static.TORCH_ALLOWED)),
        tensor_methods=_code(sorted(static.TENSOR_METHODS)), triton_allowed=_code(sorted(static.TRITON_ALLOWED))))


def build_messages(spec: OpSpec, *, device: str, ceilings: Any | None, triton_version: str, dtypes: Sequence,
                   shapes: Sequence[Sequence[int]], knowledge: Sequence[Entry] = (), priors: Sequence[PriorVariant] = (),
                   feedback: Sequence[Feedback] = (), parent_source: str | None = None,
                   evolve: bool = False) -> list[Message]:
    """[system, user] messages asking for one candidate of `spec` (an OpSpec, or an op name).

    device: the device fingerprint string; ceilings: `kforge.evaluate.roofline.Ceilings` or None;
    dtypes: torch dtypes or their names; shapes: shapes of the op's primary input; knowledge:
    entries to show (already filtered with `knowledge.relevant`; those recorded under another
    Triton are marked unverified); priors: measured variants (best shown first, the two best
    distinct sources in full); feedback: recent failures, newest last; parent_source: the file to
    improve; evolve: ask for a new EVOLVE-BLOCK region of the parent only (when it has one).
    Raises ExtractionError when the parent's markers are unbalanced."""
    if isinstance(spec, str):
        from kforge.ops import get_spec

        spec = get_spec(spec)
    dtypes = [_dtype(d) for d in dtypes] or [d for d in spec.dtypes if d != torch.float64]
    shapes = [tuple(int(d) for d in s) for s in shapes] or list(spec.shapes("smoke"))
    reference, module_doc = _reference_source(spec)
    portable, caveats = _caveats()
    parent_sha = None if parent_source is None else hashlib.sha256(parent_source.encode()).hexdigest()
    task = render(
        "task", op=spec.name, description=spec.description, module_doc=module_doc or None, schema=spec.schema,
        signature=_signature(spec), problem_dims=", ".join(spec.problem_dims), exact_dims=", ".join(spec.exact_dims) or "none",
        num_outputs=spec.num_outputs, fence=_fence(reference), reference_source=reference,
        dtypes=", ".join(_dtype_name(d) for d in dtypes), primary=spec.arg_names[spec.tensor_args[0]],
        target_rows=_target_rows(spec, shapes, dtypes, ceilings), device_section=_device_section(device, ceilings),
        triton_version=triton_version, portable_versions=portable, caveats=caveats,
        knowledge_section=_knowledge_section(knowledge, triton_version),
        priors_section=_priors_section(priors, parent_sha), feedback_section=_feedback_section(feedback),
        ask=_ask(spec, parent_source, evolve))
    return [system_message(), Message(Role.USER, task)]
