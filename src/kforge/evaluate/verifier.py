"""The verifier behind `correctness.verify`: runs the cases group by group, each call under a poison,
with the repeat, buffer and stress trials, and checks each call's outputs (type and metadata,
aliasing, unchanged inputs, special values, the error budget), naming why a wrong output is wrong."""
from __future__ import annotations

import collections
import dataclasses
import math

import torch

from kforge.evaluate.cases import Case, Layout, derive, make_inputs, perturb, relayout, variants
from kforge.evaluate.memory import Poison, bits, overlaps, poisoned, relocated, storage_bytes
from kforge.evaluate.sandbox_worker import exception_types
from kforge.evaluate.verdict import STRESS_CALLS, Check, Failure, Skip, Trial, Verdict
from kforge.records import Domain, Evidence
from kforge.router.key import call_info, dtype_signature
from kforge.specs import OpSpec
from kforge.testing import compare

HISTORY_BYTES = 1 << 30  # earlier outputs kept alive, so no new output may reuse their storage
BORDERLINE = 0.5  # worst error / budget over a group past which it is re-run on BORDERLINE_SEEDS
BORDERLINE_SEEDS = tuple(range(7000, 7016))  # fixed: the same for every run and every candidate


def _first_index(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _nbytes(outs: tuple) -> int:
    return sum(o.numel() * o.element_size() for o in outs)


class Verifier:
    def __init__(self, spec: OpSpec, forward, device: torch.device, domain: Domain, secret: int, replay: bool):
        self.spec = spec
        self.forward = forward
        self.device = device
        self.domain = domain
        self.secret = secret
        self.replay = replay
        self.device_key = f"{'cuda' if device.type == 'cuda' else 'cpu'}|verify"
        self.history: collections.deque = collections.deque()  # earlier calls' outputs, oldest first
        self.history_bytes = 0
        self.variants = variants(spec)
        self.turn = 0  # the next variant's index
        self.calls = 0
        self.worst = 0.0
        self.group_worst = 0.0
        self.signatures: list[str] = []
        self.problems: list[tuple] = []
        self.seeds: list[int] = []
        self.skipped: list[str] = []
        self.ran = 0
        self.current: Case | None = None

    def run(self, groups) -> Verdict:
        # The stress trial runs on each dtype's smallest shape: the interpreter's cost is per call.
        smallest = {}
        for group in groups:
            size = math.prod(group[0].shape) if group else 0
            if size and size < smallest.get(group[0].dtype, (math.inf,))[0]:
                smallest[group[0].dtype] = (size, id(group))
        for group in groups:
            first, self.group_worst = True, 0.0
            stress = bool(group) and smallest.get(group[0].dtype, (0, None))[1] == id(group)
            for index, case in enumerate(group):
                try:
                    ran = self.run_case(case, index, first, stress=first and stress)
                except Failure as failure:
                    return self.reject(failure, self.current)
                if ran and first:
                    first = False
            if self.group_worst > BORDERLINE and group:
                for seed in BORDERLINE_SEEDS:
                    try:
                        self.run_case(Case(group[0].shape, group[0].dtype, seed), 0, False, stress=False, vary=False)
                    except Failure as failure:
                        return self.reject(failure, self.current)
        if not self.problems:
            return Verdict(False, f"{self.spec.name}: the candidate's DOMAIN excludes every case verified "
                                  f"({'; '.join(self.skipped[:3]) or 'no cases'})", Check.DOMAIN,
                           cases=self.ran, skipped=tuple(self.skipped))
        evidence = Evidence(dtypes=tuple(dict.fromkeys(self.signatures)), shapes=tuple(dict.fromkeys(self.problems)),
                            seeds=tuple(dict.fromkeys(self.seeds)), max_error_ratio=min(self.worst, 1.0))
        return Verdict(True, "", max_error_ratio=self.worst, evidence=evidence, cases=self.ran,
                       skipped=tuple(self.skipped))

    def run_case(self, case: Case, index: int, first: bool, stress: bool, vary: bool = True) -> bool:
        """Run one case (with the next variant unless it is a group's first or special); False
        when it was outside the domain or no valid call."""
        args = None
        if vary and not first and not case.special and self.variants:
            varied = dataclasses.replace(case, variant=self.variants[self.turn % len(self.variants)])
            args = self.make_args(varied, log=False)
            if args is not None:
                case = varied
                self.turn += 1
        self.current = case
        if args is None:
            args = self.make_args(case, log=True)
        if args is None:
            return False
        poison = Poison.NAN if index % 2 == 0 else Poison.GARBAGE
        try:
            self.check_case(case, args, poison, trials=first and self.replay, stress=stress and self.replay)
        except Skip as skip:
            self.skipped.append(f"{case}: {skip}")
            return False
        return True

    def reject(self, failure: Failure, case: Case) -> Verdict:
        trial = failure.trial
        where = f"{case}" + ("" if trial == Trial.FIRST else f", {trial.value}")
        return Verdict(False, f"{where}: {failure.message}", failure.check, case, trial,
                       max_error_ratio=self.worst, cases=self.ran, skipped=tuple(self.skipped),
                       error_types=failure.error_types)

    def make_args(self, case: Case, log: bool) -> tuple | None:
        spec = self.spec
        made = make_inputs(spec, case, self.device)
        args = tuple(relayout(a, case.layout) if i in spec.tensor_args else a for i, a in enumerate(made))
        if case.layout != Layout.CONTIGUOUS and all(a is m for a, m in zip(args, made)):
            return None  # the layout does not apply to these tensors (rank): the contiguous case covers them
        why = self.domain.rejects(call_info(spec, args, self.device_key), spec.problem_dims)
        if why is not None:
            if log:
                self.skipped.append(f"{case}: {why}")
            return None
        return args

    def check_case(self, case: Case, args: tuple, poison: Poison, trials: bool, stress: bool) -> None:
        scale = case.variant.output_scale if case.variant is not None else 1.0
        self.ran += 1
        out = self.call_checked(args, Trial.FIRST, poison, scale=scale, varied=case.variant is not None)
        self.signatures.append(dtype_signature(args, self.spec.tensor_args))
        self.problems.append(tuple(self.spec.problem(args)))
        self.seeds.append(case.seed)
        if not trials or all(o.numel() == 0 for o in _as_tuple(out)):
            return
        spec = self.spec
        copies = tuple(relocated(a) if i in spec.tensor_args else a for i, a in enumerate(args))
        again = self.call_checked(copies, Trial.REPEAT, Poison.GARBAGE if poison == Poison.NAN else Poison.NAN)
        self.same_bits(out, again, Trial.REPEAT, "two runs on the same input values (at other addresses)")
        if stress:
            self.stress(args, out)
        fresh = make_inputs(spec, case, self.device, seed=derive(self.secret, "reuse", case.seed))
        for i in spec.tensor_args:
            args[i].copy_(fresh[i])
        self.call_checked(args, Trial.REUSED_BUFFERS, Poison.NAN)
        moved = [a.clone(memory_format=torch.contiguous_format) if i in spec.tensor_args else a
                 for i, a in enumerate(args)]  # new buffers: the old ones are still alive
        perturb(moved[spec.tensor_args[0]], derive(self.secret, "perturb", case.seed))
        self.call_checked(tuple(relayout(a, case.layout) if i in spec.tensor_args else a
                                for i, a in enumerate(moved)), Trial.NEW_BUFFERS, Poison.GARBAGE)

    def same_bits(self, out, again, trial: Trial, what: str) -> None:
        for n, (a, b) in enumerate(zip(_as_tuple(out), _as_tuple(again))):
            differ = bits(a) != bits(b)
            if differ.any():
                raise Failure(Check.NONDETERMINISTIC, trial, f"not deterministic: {what} differ bitwise in "
                                                               f"output {n} at index {_first_index(differ.view(a.shape))}")

    def stress(self, args: tuple, first_out) -> None:
        """STRESS_CALLS calls on the same inputs, poisons alternating, every output kept alive:
        each must be new storage holding the first output's bits."""
        spec = self.spec
        tensors = {spec.arg_names[i]: args[i] for i in spec.tensor_args}
        before = {name: storage_bytes(t) for name, t in tensors.items()}
        low = _as_tuple(spec.reference(*args))
        for k in range(STRESS_CALLS):
            out = self.call(args, low, Poison.NAN if k % 2 else Poison.GARBAGE, Trial.STRESS)
            outs = self.check_outputs(out, low, Trial.STRESS)
            self.check_aliasing(outs, tensors, low, Trial.STRESS)
            self.remember(outs)
            self.same_bits(first_out, outs, Trial.STRESS, f"call {k + 2} and the first on the same inputs")
        for name, t in tensors.items():
            if not torch.equal(storage_bytes(t), before[name]):
                raise Failure(Check.MODIFIED_INPUT, Trial.STRESS, f"modified input '{name}'")

    def call(self, args: tuple, outputs_like: tuple, poison: Poison, trial: Trial):
        self.calls += 1
        with poisoned(self.device, poison, derive(self.secret, "poison", self.calls), outputs_like):
            try:
                return self.forward(*args)
            except Exception as exc:
                raise Failure(Check.RAISED, trial, f"raised {type(exc).__name__}: {exc}",
                              tuple(exception_types(exc))) from None

    def check_outputs(self, out, low: tuple, trial: Trial) -> tuple:
        """The outputs as a tuple, each exactly a torch.Tensor with the reference's metadata."""
        if isinstance(out, (tuple, list)) and type(out) not in (tuple, list):
            raise Failure(Check.OUTPUT_TYPE, trial, f"returned a {type(out).__name__}, a subclass of "
                                                      f"{'tuple' if isinstance(out, tuple) else 'list'}")
        outs = _as_tuple(out)
        for n, o in enumerate(outs):
            if isinstance(o, torch.Tensor) and type(o) is not torch.Tensor:
                raise Failure(Check.OUTPUT_TYPE, trial, f"output {n} is a {type(o).__name__}, a subclass of "
                                                          "torch.Tensor (it may compute only when touched); "
                                                          "outputs must be exactly torch.Tensor")
        if len(outs) != len(low) or not all(isinstance(o, torch.Tensor) for o in outs):
            got = ", ".join(type(o).__name__ for o in outs)
            raise Failure(Check.OUTPUT, trial, f"returned ({got}), expected {len(low)} tensor(s)")
        for n, (o, ref) in enumerate(zip(outs, low)):
            if o.shape != ref.shape or o.dtype != ref.dtype or o.device != ref.device:
                raise Failure(Check.OUTPUT, trial, f"output {n} is {tuple(o.shape)} {o.dtype} on {o.device}, "
                                                     f"expected {tuple(ref.shape)} {ref.dtype} on {ref.device}")
        return outs

    def remember(self, outs: tuple) -> None:
        self.history.append(outs)
        self.history_bytes += _nbytes(outs)
        while self.history_bytes > HISTORY_BYTES and len(self.history) > 1:
            self.history_bytes -= _nbytes(self.history.popleft())

    def call_checked(self, args: tuple, trial: Trial, poison: Poison, scale: float = 1.0, varied: bool = False):
        """Call the candidate on `args` and check everything but determinism; returns its output."""
        spec = self.spec
        names = spec.arg_names
        tensors = {names[i]: args[i] for i in spec.tensor_args}
        before = {name: storage_bytes(t) for name, t in tensors.items()}
        oracle = _as_tuple(spec.oracle(args))  # alive across the call: their memory is not reusable
        low = _as_tuple(spec.reference(*args))
        if varied and not all(bool(torch.isfinite(r).all()) for r in oracle + low if r.is_floating_point()):
            raise Skip("the reference is not finite here (outside the dtype's range)")
        out = self.call(args, low, poison, trial)
        outs = self.check_outputs(out, low, trial)
        self.check_aliasing(outs, tensors, oracle + low, trial)
        self.remember(outs)
        for name, t in tensors.items():
            changed = storage_bytes(t) != before[name]
            if changed.any():
                raise Failure(Check.MODIFIED_INPUT, trial, f"modified input '{name}' (first changed byte at "
                                                             f"offset {_first_index(changed)[0]} of its storage)")
        self.check_special_values(args, outs, oracle, low, trial, poison)
        result = compare(spec, args, out, oracle=oracle if len(oracle) > 1 else oracle[0],
                         at_dtype=low if len(low) > 1 else low[0], scale=scale)
        if not result.ok:
            n = result.output if result.output is not None else 0
            check = self.diagnose(args, outs, low, n, result.index, poison, trial, Check.ERROR_BUDGET)
            raise Failure(check, trial, result.message + self.because(check, n, trial))
        self.worst = max(self.worst, result.worst_ratio)
        self.group_worst = max(self.group_worst, result.worst_ratio)
        return out

    def check_aliasing(self, outs: tuple, tensors: dict, references: tuple, trial: Trial) -> None:
        for n, o in enumerate(outs):
            if o.numel() == 0:
                continue
            for name, t in tensors.items():
                if t.numel() and overlaps(o, t):
                    raise Failure(Check.ALIASES_INPUT, trial, f"output {n} aliases input '{name}'")
            if any(overlaps(o, r) for r in references if r.numel()):
                raise Failure(Check.ALIASES_REFERENCE, trial, f"output {n} aliases a reference output")
            for m in range(n):
                if outs[m].numel() and overlaps(o, outs[m]):
                    raise Failure(Check.ALIASES_OUTPUT, trial, f"outputs {m} and {n} share storage")
            if any(overlaps(o, e) for earlier in self.history for e in earlier if e.numel()):
                raise Failure(Check.STALE_OUTPUT, trial, f"output {n} is the storage of an earlier call's output "
                                                           "(a cached result, or a ring of buffers, returned again)")

    def check_special_values(self, args, outs, oracle, low, trial, poison) -> None:
        """NaN/Inf only where the reference has them, NaN wherever it has NaN; each failure named
        (unwritten, replayed, computed non-finite, dropped NaN) before the error budget sees it."""
        for n, (o, want) in enumerate(zip(outs, oracle)):
            if o.numel() == 0 or not o.is_floating_point():
                continue
            want = want.detach().to(o.device)
            finite = torch.isfinite(want)
            bad = ~torch.isfinite(o) & finite
            if bad.any():
                idx = _first_index(bad)
                check = self.diagnose(args, outs, low, n, idx, poison, trial, Check.NONFINITE)
                if check == Check.UNWRITTEN and poison == Poison.NAN:
                    count = int((torch.isnan(o) & finite).sum())
                    what = ("wrote none of the output" if count == o.numel() else
                            f"wrote only part of the output: NaN at index {idx}")
                    raise Failure(check, trial, f"{what} (output {n}: {count} of {o.numel()} elements still "
                                                  "hold the NaN poison)")
                value = "NaN" if math.isnan(float(o[idx])) else str(float(o[idx]))
                raise Failure(check, trial, f"{value} at index {idx} of output {n} where the reference "
                                              f"is finite ({float(want[idx]):.6g})" + self.because(check, n, trial))
            dropped = torch.isnan(want) & ~torch.isnan(o)
            if dropped.any():
                idx = _first_index(dropped)
                raise Failure(Check.NAN_PROPAGATION, trial,
                                f"dropped NaN propagation: output {n} at index {idx} is {float(o[idx]):.6g} where "
                                "the reference is NaN (a NaN in the input must reach the outputs it feeds)")

    def because(self, check: Check, n: int, trial: Trial) -> str:
        if check == Check.UNWRITTEN:
            return (f" (output {n} changes when the call is repeated under another poison: elements never "
                    "written, or computed from what fresh memory held)")
        if check == Check.REPLAY:
            return f" (output {n} holds, bit for bit, what an earlier call returned there)"
        return ""

    def diagnose(self, args, outs, low, n: int, idx, poison: Poison, trial: Trial, otherwise: Check) -> Check:
        """Why output n is wrong: UNWRITTEN when it changes under another poison, REPLAY when its
        bad row is bit for bit an earlier call's, else `otherwise`."""
        o = outs[n]
        if idx is not None and o.dim() > 0:
            row = tuple(idx[:-1]) if len(idx) == o.dim() else ()
            for earlier in list(self.history)[:-1]:
                e = earlier[n] if len(earlier) > n else None
                if e is not None and e.shape == o.shape and e.dtype == o.dtype and e is not o and \
                        torch.equal(bits(e[row]), bits(o[row])):
                    return Check.REPLAY
        try:
            again = _as_tuple(self.call(args, low, Poison.GARBAGE if poison == Poison.NAN else Poison.NAN, trial))
        except Failure:
            again = ()
        if len(again) > n and type(again[n]) is torch.Tensor and again[n].shape == o.shape and \
                again[n].dtype == o.dtype and not torch.equal(bits(again[n]), bits(o)):
            return Check.UNWRITTEN
        return otherwise
