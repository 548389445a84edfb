"""Correctness of a candidate's `forward`, hard to fool: the evaluator's verdict on what may be routed.

    verdict = verify(spec, candidate.forward, device="cpu", domain=candidate.domain, secret_seed=s)
    verdict.accepted, verdict.check, verdict.reason, verdict.case, verdict.evidence

The error rule is `kforge.testing.compare` (fp64 oracle, budget from the reference's own error at
the kernel's dtype); this module decides what to run and what else must hold. Cases:
  - every dtype asked for (default: the op's dtypes), on every shape of the op's shape sets that
    fit the device ("smoke", "odd", "edge" on a CPU; plus "decode" and "prefill" on a GPU), plus
    for row ops a long row (2, 16384): fp16 accumulation passes short rows and fails there;
  - the caller's public seeds, and seeds and shapes derived from its `secret_seed`, which the
    generator never saw (a table of the shapes it was shown, or a seed-keyed answer, fails them);
  - a special case per shape: a NaN in one row (the outputs the reference makes NaN must be NaN)
    and an all-zero row (padding rows are zeros in real models; a missing epsilon gives NaN);
  - non-contiguous layouts (rows sliced out of wider rows, every other column, storage starting
    one element in) where the candidate's domain accepts them, with NaN in the gaps so a kernel
    that ignores strides reads NaN; cases outside the domain are skipped, exactly as the router
    would (`Domain.rejects` on the call), so a verdict covers the domain and nothing more.
Every call, before it: `torch.empty` and friends return NaN (deterministic mode's
fill_uninitialized_memory) and the caching allocator is filled with freed NaN blocks of the
outputs' sizes; the reference outputs are alive during the call, so their memory cannot be
handed back. After it, in order: it returned tensors of the right count, shape, dtype and
device; no output shares storage with an input, a reference output, another output, or an
earlier call's output (kept alive); every input is bitwise unchanged (whole storage, gaps
included); NaN only where the reference has NaN (a NaN that is gone when the call is repeated
without the poison was never written); NaN wherever the reference has NaN; then the error budget.
Per shape, the first case is also called again on the same inputs (outputs bitwise equal: reads
of uninitialised memory and racy reductions differ), on new content in the same buffers (a
result keyed by data_ptr replays), and on new buffers holding the same content with a few
elements changed (a result keyed by a sample of the content replays); failures there are REPLAY.

Cost: on a CPU under Triton's interpreter, ~5 s per dtype for a row kernel over the CPU sets. On
an H100 (measured): ~1 s per dtype without "prefill"; ~80 s with it, ~6 s a call at (16384, 8192),
almost all of it `compare` and input generation on the host.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import hashlib
import math
import random
import secrets
from typing import Any, Callable, Iterable, Sequence

import torch

from kforge.records import Domain, Evidence
from kforge.router.key import call_info, dtype_signature
from kforge.testing import compare

Shape = tuple[int, ...]

DEFAULT_SEEDS = (0, 1)
CPU_SETS = ("smoke", "odd", "edge")
GPU_SETS = CPU_SETS + ("decode", "prefill")
LONG_ROW: Shape = (2, 16384)  # long enough that fp16 accumulation visibly leaves the budget
SECRET_SHAPES = 2
SECRET_SEEDS = 1  # per shape, beside the public seeds
PERTURB_EVERY = 64  # the near-identical replay input changes one element in this many (at least one)
HISTORY = 12  # earlier calls whose outputs stay alive, so no new output may reuse their storage


class Check(str, enum.Enum):
    RAISED = "raised"
    OUTPUT = "output"  # wrong number, type, shape, dtype or device of outputs
    ALIASES_INPUT = "aliases-input"
    ALIASES_REFERENCE = "aliases-reference"
    ALIASES_OUTPUT = "aliases-output"  # two outputs of one call share storage
    STALE_OUTPUT = "stale-output"  # returned the storage of an earlier call's output
    MODIFIED_INPUT = "modified-input"
    UNWRITTEN = "unwritten"  # left poisoned (NaN) elements in its output
    NONFINITE = "nonfinite"  # NaN/Inf where the reference is finite
    NAN_PROPAGATION = "nan-propagation"  # finite where the reference is NaN
    ERROR_BUDGET = "error-budget"
    NONDETERMINISTIC = "nondeterministic"
    REPLAY = "replay"  # right once, wrong on new content: replays an earlier result
    DOMAIN = "domain"  # its DOMAIN excludes every case


class Layout(str, enum.Enum):
    CONTIGUOUS = "contiguous"
    SLICED_ROWS = "sliced-rows"  # tensors of rank >= 2 are [..., :n] of rows 3 wider
    STRIDED_COLS = "strided-cols"  # every tensor is [..., ::2] of a buffer twice as wide
    OFFSET = "offset"  # contiguous, starting one element into its storage (misaligned)


class Trial(str, enum.Enum):
    FIRST = "first call"
    REPEAT = "repeated on the same inputs"
    REUSED_BUFFERS = "same input buffers, new content"
    NEW_BUFFERS = "new input buffers, content almost the same"


@dataclasses.dataclass(frozen=True)
class Case:
    shape: Shape  # of the primary input, as spec.make_inputs takes it
    dtype: torch.dtype
    seed: int
    layout: Layout = Layout.CONTIGUOUS
    special: bool = False  # one row holds a NaN, another is all zeros
    secret: bool = False  # shape or seed derived from the caller's secret

    def __str__(self) -> str:
        extra = "".join([f", {self.layout.value}" if self.layout != Layout.CONTIGUOUS else "",
                         ", NaN row + zero row" if self.special else "", ", secret" if self.secret else ""])
        return f"shape {self.shape} {str(self.dtype).removeprefix('torch.')} seed {self.seed}{extra}"


@dataclasses.dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str  # "" when accepted; else the failing case, trial and what went wrong
    check: Check | None = None
    case: Case | None = None
    trial: Trial | None = None
    max_error_ratio: float = 0.0  # worst error / budget over every output checked
    evidence: Evidence | None = None  # what was verified (None when rejected)
    cases: int = 0  # cases run
    skipped: tuple[str, ...] = ()  # cases outside the domain, with the domain's reason


class _Failure(Exception):
    def __init__(self, check: Check, trial: Trial, message: str):
        super().__init__(message)
        self.check = check
        self.trial = trial
        self.message = message


def verify(spec, forward: Callable[..., Any], *, device="cpu", dtypes: Iterable[torch.dtype] | None = None,
           shape_sets: Sequence[str] | None = None, shapes: Iterable[Shape] | None = None,
           seeds: Iterable[int] = DEFAULT_SEEDS, secret_seed: int | None = None, domain: Domain | None = None,
           layouts: Iterable[Layout] | None = None, long_row: bool | None = None,
           secret_shapes: int = SECRET_SHAPES, replay: bool = True, timed: Iterable[Shape] = ()) -> Verdict:
    """Verify `forward` (a candidate's, with `spec`'s signature) against `spec`'s reference.

    device: where inputs live ("cpu", "cuda", ...). dtypes: of the primary input (default
    spec.dtypes). shapes: primary-input shapes, replacing `shape_sets` (default: the sets that fit
    the device). seeds: public seeds. secret_seed: derives the secret seeds and shapes (default:
    fresh from the OS, so every run differs). domain: the candidate's DOMAIN (default: every
    call). layouts: default all, each run only where `domain` accepts it. long_row: add the long
    row case (default: for row ops, when `shapes` is not given). secret_shapes: how many.
    replay: run the repeat and replay trials. timed: shapes verified besides the others, the
    ones records will be written for (the router serves a record no further than its evidence). Returns the first failure, or an acceptance with
    the evidence (dtype signatures, problems and seeds verified, worst error ratio).
    """
    device = torch.device(device)
    secret = secrets.randbits(63) if secret_seed is None else int(secret_seed)
    groups = _cases(spec, device, dtypes, shape_sets, shapes, tuple(seeds), secret,
                    tuple(Layout) if layouts is None else tuple(layouts), long_row, secret_shapes, tuple(timed))
    return _Verifier(spec, forward, device, domain or Domain(), secret, replay).run(groups)


def _derive(secret: int, *labels) -> int:
    digest = hashlib.sha256(repr((secret,) + labels).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _secret_shapes(public: Sequence[Shape], secret: int, count: int) -> list[Shape]:
    """Shapes near the public ones, never among them and never a power of two wide: the first
    from the widest public shape (a table of widths, or a block sized for the widths shown,
    fails it), the others from random public shapes."""
    bases = sorted((s for s in public if s and all(d > 0 for d in s)), key=lambda s: (s[-1], s))
    rng = random.Random(_derive(secret, "shapes"))
    out: list[Shape] = []
    for i in range(count if bases else 0):
        base = bases[-1] if i == 0 else rng.choice(bases)
        for _ in range(100):
            n = base[-1] + rng.randint(1, max(8, base[-1] // 8))
            lead = tuple(rng.randint(1, max(1, min(d, 6))) for d in base[:-1])
            shape = lead + (n,)
            if n & (n - 1) and shape not in public and shape not in out:
                out.append(shape)
                break
    return out


def secret_shapes_of(spec, public: Sequence[Shape], secret: int, count: int) -> list[Shape]:
    """The secret shapes for `spec`: none when its shapes are fixed, the op's own rule when it has
    one (`OpSpec.secret_shapes`: a KernelBench file varies only the sizes its globals define),
    else `_secret_shapes`."""
    if spec.fixed_shapes or count <= 0:
        return []
    own = getattr(spec, "secret_shapes", None)
    if own is not None:
        return [tuple(s) for s in own(public, random.Random(_derive(secret, "shapes")), count)]
    return _secret_shapes(public, secret, count)


def _cases(spec, device, dtypes, shape_sets, shapes, seeds, secret, layouts, long_row, secret_shapes, timed=()):
    """Cases grouped per (dtype, shape); each group's first case carries the replay trials."""
    if shapes is not None:
        public = [tuple(s) for s in shapes]
    else:
        sets = shape_sets or (GPU_SETS if device.type == "cuda" else CPU_SETS)
        public = list(spec.shapes(*[s for s in sets if s in spec.shape_sets]))
    if long_row is None:
        long_row = shapes is None and spec.problem_dims[:1] == ("rows",)
    if long_row and LONG_ROW not in public:
        public.append(LONG_ROW)
    public += [tuple(s) for s in dict.fromkeys(tuple(s) for s in timed) if tuple(s) not in public]
    hidden = secret_shapes_of(spec, public, secret, secret_shapes)
    secret_seeds = [_derive(secret, "seed", i) for i in range(SECRET_SEEDS)]
    groups = []
    for dtype in (tuple(dtypes) if dtypes is not None else spec.dtypes):
        for shape in public + hidden:
            is_secret = shape in hidden
            group = [Case(shape, dtype, s, secret=is_secret) for s in ([] if is_secret else list(seeds))]
            group += [Case(shape, dtype, s, secret=True) for s in secret_seeds]
            if math.prod(shape) > 0:
                group.append(Case(shape, dtype, _derive(secret, "special", shape), special=True, secret=True))
                group += [Case(shape, dtype, _derive(secret, "layout", shape, layout.value), layout=layout, secret=True)
                          for layout in layouts if layout != Layout.CONTIGUOUS]
            groups.append(group)
    return groups


# -- input construction -----------------------------------------------------------------------------
def _relayout(t: torch.Tensor, layout: Layout) -> torch.Tensor:
    """A copy of `t` in `layout`, the gaps of its storage filled with NaN (or the max integer)."""
    if layout == Layout.CONTIGUOUS or t.numel() == 0:
        return t
    fill = float("nan") if t.is_floating_point() else torch.iinfo(t.dtype).max
    if layout == Layout.SLICED_ROWS:
        if t.dim() < 2:
            return t
        buf = torch.full((*t.shape[:-1], t.shape[-1] + 3), fill, dtype=t.dtype, device=t.device)
        view = buf[..., : t.shape[-1]]
    elif layout == Layout.STRIDED_COLS:
        buf = torch.full((*t.shape[:-1], 2 * t.shape[-1]), fill, dtype=t.dtype, device=t.device)
        view = buf[..., ::2]
    else:
        buf = torch.full((t.numel() + 1,), fill, dtype=t.dtype, device=t.device)
        view = buf[1:].view(t.shape)
    view.copy_(t)
    return view


def _inject_special(args: tuple, index: int, seed: int) -> None:
    """In place: one NaN in one row of the primary input, and another row (if any) all zeros."""
    x = args[index]
    if not x.is_floating_point() or x.numel() == 0:
        return
    rows = x.reshape(-1, x.shape[-1]) if x.dim() else x.reshape(1, 1)  # a view: make_inputs is contiguous
    rng = random.Random(seed)
    nan_row = rng.randrange(rows.shape[0])
    rows[nan_row, rng.randrange(rows.shape[1])] = float("nan")
    if rows.shape[0] > 1:
        rows[(nan_row + 1 + rng.randrange(rows.shape[0] - 1)) % rows.shape[0]] = 0


def _perturb(x: torch.Tensor, seed: int) -> None:
    """In place, `x` contiguous: change one element in every PERTURB_EVERY (at least one)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    count = max(1, x.numel() // PERTURB_EVERY)
    where = torch.randperm(x.numel(), generator=gen)[:count].to(x.device)
    values = torch.randn(count, generator=gen, dtype=torch.float32) * 2 + 3  # clearly new values
    x.view(-1)[where] = values.to(device=x.device, dtype=x.dtype)


# -- memory: poison, spans, snapshots -----------------------------------------------------------------
@contextlib.contextmanager
def _empty_filled(poison: bool):
    """Inside the block, torch.empty & co. return NaN-filled memory (integers: their max) when
    `poison`, and whatever the allocator holds otherwise (deterministic mode's fill switched off)."""
    import torch.utils.deterministic as det

    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             det.fill_uninitialized_memory)
    if poison:
        torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = poison
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        det.fill_uninitialized_memory = saved[2]


def _fill_allocator(device: torch.device, nbytes: Iterable[int], value: float) -> None:
    """Allocate and free blocks of these sizes filled with `value`, so that the caching allocator
    (on a GPU; malloc on a CPU, less reliably) hands that content to the next allocations."""
    blocks = [torch.full((max(1, (n + 3) // 4),), value, dtype=torch.float32, device=device) for n in nbytes]
    del blocks


def _span(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.data_ptr() + storage.nbytes()


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a1 > a0 and b1 > b0 and a0 < b1 and b0 < a1


def _storage_bytes(t: torch.Tensor) -> torch.Tensor:
    """A uint8 copy of `t`'s whole storage (its gaps and the memory around a view included)."""
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage()).clone()


def _bits(t: torch.Tensor) -> torch.Tensor:
    """`t`'s elements as integers of the same width: bitwise comparison, NaN included."""
    width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.detach().contiguous().view(width)


def _first_index(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


# -- the verifier -----------------------------------------------------------------------------------
class _Verifier:
    def __init__(self, spec, forward, device: torch.device, domain: Domain, secret: int, replay: bool):
        self.spec = spec
        self.forward = forward
        self.device = device
        self.domain = domain
        self.secret = secret
        self.replay = replay
        self.device_key = f"{'cuda' if device.type == 'cuda' else 'cpu'}|verify"
        self.history: collections.deque = collections.deque(maxlen=HISTORY)  # earlier calls' outputs
        self.worst = 0.0
        self.signatures: list[str] = []
        self.problems: list[tuple] = []
        self.seeds: list[int] = []
        self.skipped: list[str] = []
        self.ran = 0

    def run(self, groups) -> Verdict:
        for group in groups:
            first = True
            for case in group:
                try:
                    args = self.make_args(case)
                    if args is None:
                        continue
                    self.check_case(case, args, trials=first and self.replay)
                    first = False
                except _Failure as failure:
                    return self.reject(failure, case)
        if not self.problems:
            return Verdict(False, f"{self.spec.name}: the candidate's DOMAIN excludes every case verified "
                                  f"({'; '.join(self.skipped[:3]) or 'no cases'})", Check.DOMAIN,
                           cases=self.ran, skipped=tuple(self.skipped))
        evidence = Evidence(dtypes=tuple(dict.fromkeys(self.signatures)), shapes=tuple(dict.fromkeys(self.problems)),
                            seeds=tuple(dict.fromkeys(self.seeds)), max_error_ratio=min(self.worst, 1.0))
        return Verdict(True, "", max_error_ratio=self.worst, evidence=evidence, cases=self.ran,
                       skipped=tuple(self.skipped))

    def reject(self, failure: _Failure, case: Case) -> Verdict:
        trial = failure.trial
        where = f"{case}" + ("" if trial == Trial.FIRST else f", {trial.value}")
        return Verdict(False, f"{where}: {failure.message}", failure.check, case, trial,
                       max_error_ratio=self.worst, cases=self.ran, skipped=tuple(self.skipped))

    def make_args(self, case: Case) -> tuple | None:
        args = self.spec.make_inputs(case.shape, case.dtype, self.device, case.seed)
        if case.special:
            _inject_special(args, self.spec.tensor_args[0], case.seed)
        args = tuple(_relayout(a, case.layout) if i in self.spec.tensor_args else a for i, a in enumerate(args))
        why = self.domain.rejects(call_info(self.spec, args, self.device_key), self.spec.problem_dims)
        if why is not None:
            self.skipped.append(f"{case}: {why}")
            return None
        return args

    def check_case(self, case: Case, args: tuple, trials: bool) -> None:
        self.ran += 1
        out = self.call_checked(args, Trial.FIRST)
        self.signatures.append(dtype_signature(args, self.spec.tensor_args))
        self.problems.append(tuple(self.spec.problem(args)))
        self.seeds.append(case.seed)
        if not trials or all(o.numel() == 0 for o in _as_tuple(out)):
            return
        again = self.call_checked(args, Trial.REPEAT)
        for n, (a, b) in enumerate(zip(_as_tuple(out), _as_tuple(again))):
            differ = _bits(a) != _bits(b)
            if differ.any():
                raise _Failure(Check.NONDETERMINISTIC, Trial.REPEAT,
                                f"not deterministic: two runs on the same inputs differ bitwise in output {n} "
                                f"at index {_first_index(differ.view(a.shape))}")
        fresh = self.spec.make_inputs(case.shape, case.dtype, self.device, _derive(self.secret, "reuse", case.seed))
        for i in self.spec.tensor_args:
            args[i].copy_(fresh[i])
        self.call_checked(args, Trial.REUSED_BUFFERS)
        moved = [a.clone(memory_format=torch.contiguous_format) if i in self.spec.tensor_args else a
                 for i, a in enumerate(args)]  # new buffers: the old ones are still alive
        _perturb(moved[self.spec.tensor_args[0]], _derive(self.secret, "perturb", case.seed))
        self.call_checked(tuple(_relayout(a, case.layout) if i in self.spec.tensor_args else a
                                for i, a in enumerate(moved)), Trial.NEW_BUFFERS)

    def call(self, args: tuple, outputs_like: tuple, poison: bool):
        if poison:
            _fill_allocator(self.device, [o.numel() * o.element_size() for o in outputs_like]
                            + [2 * sum(o.numel() * o.element_size() for o in outputs_like)], float("nan"))
        else:
            _fill_allocator(self.device, [o.numel() * o.element_size() for o in outputs_like], 0.0)
        with _empty_filled(poison):
            return self.forward(*args)

    def call_checked(self, args: tuple, trial: Trial):
        """Call the candidate on `args` and check everything but determinism; returns its output."""
        spec = self.spec
        names = spec.arg_names
        tensors = {names[i]: args[i] for i in spec.tensor_args}
        before = {name: _storage_bytes(t) for name, t in tensors.items()}
        oracle = _as_tuple(spec.oracle(args))  # alive across the call: their memory is not reusable
        low = _as_tuple(spec.reference(*args))
        try:
            out = self.call(args, low, poison=True)
        except Exception as exc:
            raise _Failure(Check.RAISED, trial, f"raised {type(exc).__name__}: {exc}") from None
        outs = _as_tuple(out)
        value_check = Check.REPLAY if trial in (Trial.REUSED_BUFFERS, Trial.NEW_BUFFERS) else None
        if len(outs) != len(low) or not all(isinstance(o, torch.Tensor) for o in outs):
            got = ", ".join(type(o).__name__ for o in outs)
            raise _Failure(Check.OUTPUT, trial, f"returned ({got}), expected {len(low)} tensor(s)")
        for n, (o, ref) in enumerate(zip(outs, low)):
            if o.shape != ref.shape or o.dtype != ref.dtype or o.device != ref.device:
                raise _Failure(Check.OUTPUT, trial, f"output {n} is {tuple(o.shape)} {o.dtype} on {o.device}, "
                                                     f"expected {tuple(ref.shape)} {ref.dtype} on {ref.device}")
        self.check_aliasing(outs, tensors, oracle + low, trial)
        self.history.append(outs)
        for name, t in tensors.items():
            changed = _storage_bytes(t) != before[name]
            if changed.any():
                raise _Failure(Check.MODIFIED_INPUT, trial, f"modified input '{name}' (first changed byte at "
                                                             f"offset {_first_index(changed)[0]} of its storage)")
        self.check_special_values(args, outs, oracle, trial, value_check)
        result = compare(spec, args, out, oracle=oracle if len(oracle) > 1 else oracle[0],
                         at_dtype=low if len(low) > 1 else low[0])
        if not result.ok:
            raise _Failure(value_check or self.replayed(outs) or Check.ERROR_BUDGET, trial, result.message)
        self.worst = max(self.worst, result.worst_ratio)
        return out

    def check_aliasing(self, outs: tuple, tensors: dict, references: tuple, trial: Trial) -> None:
        for n, o in enumerate(outs):
            if o.numel() == 0:
                continue
            for name, t in tensors.items():
                if t.numel() and _overlaps(o, t):
                    raise _Failure(Check.ALIASES_INPUT, trial, f"output {n} aliases input '{name}'")
            if any(_overlaps(o, r) for r in references if r.numel()):
                raise _Failure(Check.ALIASES_REFERENCE, trial, f"output {n} aliases a reference output")
            for m in range(n):
                if outs[m].numel() and _overlaps(o, outs[m]):
                    raise _Failure(Check.ALIASES_OUTPUT, trial, f"outputs {m} and {n} share storage")
            if any(_overlaps(o, e) for earlier in self.history for e in earlier if e.numel()):
                raise _Failure(Check.STALE_OUTPUT, trial, f"output {n} is the storage of an earlier call's output "
                                                           "(a cached result, returned again)")

    def check_special_values(self, args, outs, oracle, trial, value_check) -> None:
        """NaN/Inf only where the reference has them, NaN wherever it has NaN; each failure named
        (unwritten, computed non-finite, dropped NaN) before the error budget sees it."""
        for n, (o, want) in enumerate(zip(outs, oracle)):
            if o.numel() == 0 or not o.is_floating_point():
                continue
            want = want.detach().to(o.device)
            finite = torch.isfinite(want)
            extra_nan = torch.isnan(o) & finite
            if extra_nan.any():
                unwritten = self.unwritten(args, n, extra_nan)
                if unwritten is not None and unwritten.any():
                    count, total = int(unwritten.sum()), o.numel()
                    what = ("wrote none of the output" if count == total else
                            f"wrote only part of the output: NaN at index {_first_index(unwritten)}")
                    raise _Failure(value_check or Check.UNWRITTEN, trial,
                                    f"{what} (output {n}: {count} of {total} elements still hold the NaN poison)")
                idx = _first_index(extra_nan)
                raise _Failure(value_check or Check.NONFINITE, trial, f"NaN at index {idx} of output {n} where "
                                                                       f"the reference is finite ({float(want[idx]):.6g})")
            extra_inf = torch.isinf(o) & finite
            if extra_inf.any():
                idx = _first_index(extra_inf)
                raise _Failure(value_check or Check.NONFINITE, trial, f"{float(o[idx])} at index {idx} of output {n} "
                                                                       f"where the reference is finite ({float(want[idx]):.6g})")
            dropped = torch.isnan(want) & ~torch.isnan(o)
            if dropped.any():
                idx = _first_index(dropped)
                raise _Failure(value_check or Check.NAN_PROPAGATION, trial,
                                f"dropped NaN propagation: output {n} at index {idx} is {float(o[idx]):.6g} where "
                                "the reference is NaN (a NaN in the input must reach the outputs it feeds)")

    def unwritten(self, args: tuple, n: int, extra_nan: torch.Tensor) -> torch.Tensor | None:
        """Of the unexpected NaN in output n, those that are gone when the call is repeated with
        zeros instead of the NaN poison: elements the candidate never wrote."""
        low = _as_tuple(self.spec.reference(*args))
        try:
            again = _as_tuple(self.call(args, low, poison=False))
        except Exception:
            return None
        if len(again) <= n or not isinstance(again[n], torch.Tensor) or again[n].shape != extra_nan.shape:
            return None
        return extra_nan & ~torch.isnan(again[n].detach().to(extra_nan.device))

    def replayed(self, outs: tuple) -> Check | None:
        """REPLAY when a wrong output is bitwise the output of an earlier call (on other inputs)."""
        for earlier in list(self.history)[:-1]:
            if len(earlier) == len(outs) and all(
                    e.shape == o.shape and e.dtype == o.dtype and torch.equal(_bits(e), _bits(o))
                    for e, o in zip(earlier, outs)):
                return Check.REPLAY
        return None
