"""`kforge.evaluate.correctness.verify`: what it runs and what it rejects, and why.

Plain-torch forwards (fast) probe each check one at a time; the honest Triton candidates in
tests/candidates (run by Triton's interpreter on CPU) are the positive controls. The adversarial
corpus is test_adversarial.py's."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kforge.candidate import load_candidate
from kforge.evaluate.cases import CPU_SETS, LONG_ROW, Layout, secret_shapes
from kforge.evaluate.correctness import Check, Trial, verify
from kforge.ops import get_spec
from kforge.records import Domain

CANDIDATES = Path(__file__).resolve().parent / "candidates"
RMS, SOFTMAX, FUSED = get_spec("rms_norm"), get_spec("softmax"), get_spec("fused_add_rms_norm")
SMALL = dict(dtypes=(torch.float32,), shapes=((4, 64), (3, 100)), seeds=(0,), secret_seed=11, secret_shapes=1)


def load(name: str, spec):
    return load_candidate(CANDIDATES / f"{name}.py", f"kforge_test_candidates_{name}", spec)


# -- positive controls --------------------------------------------------------------------------------
def test_honest_rms_norm_is_accepted_on_every_cpu_shape_class_and_layout():
    candidate = load("rms_norm_strided", RMS)
    verdict = verify(RMS, candidate.forward, domain=candidate.domain, dtypes=(torch.float32,), secret_seed=1)
    assert verdict.accepted, verdict.reason
    problems = set(verdict.evidence.shapes)
    assert {tuple(RMS.problem(RMS.make_inputs(s, torch.float32, "cpu", 0))) for s in RMS.shapes(*CPU_SETS)} <= problems
    assert LONG_ROW in problems
    assert len(problems) > len(RMS.shapes(*CPU_SETS)) + 1  # the secret shapes
    assert {0, 1} < set(verdict.evidence.seeds)  # public seeds and secret ones
    assert verdict.evidence.dtypes == ("float32,float32",)
    assert not verdict.skipped  # its DOMAIN claims every layout: all of them ran
    assert 0 < verdict.max_error_ratio <= 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_honest_candidates_are_accepted_in_half_precision(dtype):
    for name, spec in (("rms_norm_strided", RMS), ("softmax_rowwise", SOFTMAX)):
        candidate = load(name, spec)
        verdict = verify(spec, candidate.forward, domain=candidate.domain, dtypes=(dtype,), shape_sets=("odd",),
                         seeds=(0,), secret_seed=2)
        assert verdict.accepted, f"{name}: {verdict.reason}"
        assert LONG_ROW in verdict.evidence.shapes


def test_honest_softmax_runs_only_the_layouts_its_domain_accepts():
    candidate = load("softmax_rowwise", SOFTMAX)
    verdict = verify(SOFTMAX, candidate.forward, domain=candidate.domain, dtypes=(torch.float32,), secret_seed=3)
    assert verdict.accepted, verdict.reason
    assert verdict.skipped and all("needs contiguous inputs" in s for s in verdict.skipped)
    assert not any(Layout.OFFSET in s for s in verdict.skipped)  # contiguous, misaligned: inside the domain


def test_honest_two_output_candidate_is_accepted():
    candidate = load("fused_add_rms_norm_rowwise", FUSED)
    verdict = verify(FUSED, candidate.forward, domain=candidate.domain, dtypes=(torch.float32,),
                     shape_sets=("smoke", "edge"), seeds=(0,), secret_seed=4)
    assert verdict.accepted, verdict.reason


@pytest.mark.parametrize("spec", [RMS, SOFTMAX, FUSED], ids=lambda s: s.name)
def test_the_vendor_is_accepted(spec):
    """Every trial (layouts, special values, magnitudes, replays) on an implementation that is not
    the reference. The reference itself would pass by construction: the budget is twice its own error."""
    verdict = verify(spec, spec.vendor, dtypes=(torch.float32, torch.bfloat16), secret_seed=5)
    assert verdict.accepted, verdict.reason


# -- each check, one forward each ---------------------------------------------------------------------
def rejected(spec, forward, **kwargs):
    verdict = verify(spec, forward, **{**SMALL, **kwargs})
    assert not verdict.accepted and verdict.evidence is None
    return verdict


def test_raising_is_rejected_with_the_exception():
    def forward(x):
        raise RuntimeError("no kernel for you")

    verdict = rejected(SOFTMAX, forward)
    assert verdict.check == Check.RAISED and "RuntimeError: no kernel for you" in verdict.reason
    assert verdict.error_types == ("builtins.RuntimeError",)


def test_wrong_dtype_or_count_is_an_output_error():
    assert rejected(SOFTMAX, lambda x: SOFTMAX.reference(x).double()).check == Check.OUTPUT
    assert rejected(FUSED, lambda x, r, w, eps: FUSED.reference(x, r, w, eps)[0]).check == Check.OUTPUT


def test_outputs_sharing_storage_are_rejected():
    def forward(x, residual, weight, eps):
        y, _ = FUSED.reference(x, residual, weight, eps)
        return y, y

    verdict = rejected(FUSED, forward)
    assert verdict.check == Check.ALIASES_OUTPUT and "outputs 0 and 1 share storage" in verdict.reason


def test_a_view_of_an_input_is_aliasing():
    def forward(x, weight, eps):
        return x.view(x.shape)

    verdict = rejected(RMS, forward)
    assert verdict.check == Check.ALIASES_INPUT and "input 'x'" in verdict.reason


def test_writing_into_the_gaps_of_a_strided_input_is_modifying_it():
    def forward(x):
        y = SOFTMAX.reference(x)
        if not x.is_contiguous():  # the element just past row 0: not part of x, but its storage
            x.as_strided((1,), (1,), x.storage_offset() + x.shape[-1]).fill_(0)
        return y

    verdict = rejected(SOFTMAX, forward)
    assert verdict.check == Check.MODIFIED_INPUT and verdict.case.layout == Layout.SLICED_ROWS
    assert "modified input 'x'" in verdict.reason


def test_unwritten_elements_and_computed_nan_are_told_apart():
    def partial(x):
        y = torch.empty_like(x)
        y[:, :-1] = SOFTMAX.reference(x)[:, :-1]
        return y

    def computed_nan(x):
        y = SOFTMAX.reference(x)
        y[0, 1] = float("nan")
        return y

    verdict = rejected(SOFTMAX, partial)
    assert verdict.check == Check.UNWRITTEN and "wrote only part of the output: NaN at index (0, 63)" in verdict.reason
    verdict = rejected(SOFTMAX, computed_nan)
    assert verdict.check == Check.NONFINITE and "NaN at index (0, 1)" in verdict.reason


def test_inf_where_the_reference_is_finite_is_rejected():
    def forward(x):
        y = SOFTMAX.reference(x)
        y[-1, -1] = float("inf")
        return y

    assert rejected(SOFTMAX, forward).check == Check.NONFINITE


def test_nan_must_propagate():
    verdict = rejected(SOFTMAX, lambda x: torch.nan_to_num(SOFTMAX.reference(x)))
    assert verdict.check == Check.NAN_PROPAGATION and verdict.case.special


def test_computing_in_a_cheaper_dtype_is_over_budget():
    verdict = rejected(RMS, lambda x, w, eps: RMS.reference(x.half(), w.half(), eps).float())
    assert verdict.check == Check.ERROR_BUDGET and "over budget" in verdict.reason


def test_nondeterminism_is_rejected():
    calls = []

    def forward(x):
        calls.append(1)
        y = SOFTMAX.reference(x)
        return torch.nextafter(y, torch.full_like(y, 2.0)) if len(calls) % 2 == 0 else y

    verdict = rejected(SOFTMAX, forward)
    assert verdict.check == Check.NONDETERMINISTIC and verdict.trial == Trial.REPEAT


def test_returning_an_earlier_output_is_stale():
    kept = {}

    def forward(x):
        return kept.setdefault(x.shape, SOFTMAX.reference(x))

    verdict = rejected(SOFTMAX, forward)
    assert verdict.check == Check.STALE_OUTPUT and verdict.trial == Trial.REPEAT


def test_replay_by_data_ptr_and_by_content_sample_are_rejected():
    by_ptr, by_sample = {}, {}

    def replay_ptr(x):
        return by_ptr.setdefault(x.data_ptr(), SOFTMAX.reference(x)).clone()

    def replay_sample(x):
        return by_sample.setdefault(tuple(x.reshape(-1)[:4].tolist()), SOFTMAX.reference(x)).clone()

    verdict = rejected(SOFTMAX, replay_ptr)
    assert (verdict.check, verdict.trial) == (Check.REPLAY, Trial.REUSED_BUFFERS)
    verdict = rejected(SOFTMAX, replay_sample)
    assert (verdict.check, verdict.trial) == (Check.REPLAY, Trial.NEW_BUFFERS)


def test_a_kernel_ignoring_strides_is_caught_only_where_its_domain_claims_strides():
    def contiguous_only(x):  # reads x's storage as if x were contiguous
        return SOFTMAX.reference(torch.as_strided(x, x.shape, torch.empty(x.shape).stride()))

    verdict = rejected(SOFTMAX, contiguous_only)
    assert verdict.case.layout in (Layout.SLICED_ROWS, Layout.STRIDED_COLS)
    honest = verify(SOFTMAX, contiguous_only, domain=Domain(contiguous=True), **SMALL)
    assert honest.accepted, honest.reason


# -- what runs ----------------------------------------------------------------------------------------
def test_domain_limits_what_is_verified_and_what_the_evidence_claims():
    verdict = verify(SOFTMAX, SOFTMAX.reference, domain=Domain(dims={"cols": [1, 128]}, align=16),
                     dtypes=(torch.float32,), secret_seed=6)
    assert verdict.accepted
    assert all(cols <= 128 for _, cols in verdict.evidence.shapes)
    assert any("cols=" in s for s in verdict.skipped) and any("aligned" in s for s in verdict.skipped)
    nothing = verify(SOFTMAX, SOFTMAX.reference, domain=Domain(dtypes=("float16",)), **SMALL)
    assert not nothing.accepted and nothing.check == Check.DOMAIN


def test_secret_shapes_are_new_odd_and_follow_the_secret():
    public = list(RMS.shapes(*CPU_SETS))
    a, b = secret_shapes(public, 1, 3), secret_shapes(public, 2, 3)
    assert a == secret_shapes(public, 1, 3) and a != b
    for shape in a + b:
        assert shape not in public and shape[-1] & (shape[-1] - 1)
    assert a[0][-1] > max(s[-1] for s in public)  # from the widest public shape


def test_secret_seed_changes_the_cases_and_is_reproducible():
    kwargs = dict(dtypes=(torch.float32,), shapes=((4, 64),), seeds=(0,))
    one = verify(SOFTMAX, SOFTMAX.reference, secret_seed=7, **kwargs).evidence
    assert one == verify(SOFTMAX, SOFTMAX.reference, secret_seed=7, **kwargs).evidence
    other = verify(SOFTMAX, SOFTMAX.reference, secret_seed=8, **kwargs).evidence
    assert set(one.seeds) != set(other.seeds) and set(one.shapes) != set(other.shapes)


def test_long_row_is_added_for_row_ops_unless_shapes_are_given():
    default = verify(SOFTMAX, SOFTMAX.reference, dtypes=(torch.float32,), shape_sets=("smoke",), secret_seed=9)
    given = verify(SOFTMAX, SOFTMAX.reference, dtypes=(torch.float32,), shapes=((4, 64),), secret_seed=9)
    assert LONG_ROW in default.evidence.shapes and LONG_ROW not in given.evidence.shapes


def test_global_torch_state_is_restored():
    import torch.utils.deterministic as det

    before = (torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory)
    verify(SOFTMAX, SOFTMAX.reference, **SMALL)
    rejected(SOFTMAX, lambda x: torch.empty_like(x))
    assert (torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory) == before


# -- issue 14: outputs, poison and variants -----------------------------------------------------------
class _Lazy(torch.Tensor):
    """Computes on first touch, as a lazy-output cheat would (the static check forbids classes)."""


def test_a_tensor_subclass_output_is_rejected():
    def forward(x):
        return SOFTMAX.reference(x).as_subclass(_Lazy)

    verdict = rejected(SOFTMAX, forward)
    assert verdict.check == Check.OUTPUT_TYPE and "_Lazy, a subclass of torch.Tensor" in verdict.reason


def test_a_tuple_subclass_is_rejected():
    class Outputs(tuple):
        pass

    verdict = rejected(FUSED, lambda x, r, w, eps: Outputs(FUSED.reference(x, r, w, eps)))
    assert verdict.check == Check.OUTPUT_TYPE


def test_fresh_memory_is_nan_on_some_calls_and_finite_garbage_on_others():
    seen = []

    def forward(x):
        y = torch.empty_like(x)
        seen.append(bool(torch.isnan(y).all()))
        return y.copy_(SOFTMAX.reference(x))

    assert verify(SOFTMAX, forward, **SMALL).accepted
    assert True in seen and False in seen


def test_a_kernel_honest_only_on_nan_memory_is_unwritten():
    def forward(x):
        y = torch.empty_like(x)
        return y.copy_(SOFTMAX.reference(x)) if torch.isnan(y).any() else y

    verdict = rejected(SOFTMAX, forward)
    assert verdict.check == Check.UNWRITTEN and "another poison" in verdict.reason


@pytest.mark.parametrize("name", ["rms_norm", "fused_add_rms_norm", "layer_norm", "softmax", "silu_and_mul",
                                  "topk_softmax", "cross_entropy", "rotary_embedding", "gemv"])
def test_every_op_declares_magnitudes_and_variants_its_vendor_passes(name):
    """The spec's magnitudes and scalar variants are valid calls at every half and full dtype:
    the vendor is accepted on them (and they ran: no case was skipped as out of range)."""
    spec = get_spec(name)
    shapes = spec.shape_sets["smoke"][:1] + (spec.shape_sets["odd"][0],)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        verdict = verify(spec, spec.vendor, dtypes=(dtype,), shapes=shapes, seeds=(0, 1), secret_seed=3,
                         secret_shapes=1, layouts=(Layout.SLICED_ROWS, Layout.OFFSET), replay=False)
        assert verdict.accepted, f"{dtype}: {verdict.reason}"
        assert not any("not finite" in s for s in verdict.skipped), verdict.skipped
