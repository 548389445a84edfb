"""The adversarial corpus (tests/adversarial, one cheat per file; README.md lists them): every
file is rejected, and for its own reason.

Static cheats must produce their Rule from `check_source` (and are never imported: some exit or
hang when called). Dynamic cheats must pass `check_source`, so that what catches them is the
check named, and `verify` must reject them with that Check (and, where it matters, on the case
that exposes them: an odd width, a secret shape, the long row, the special NaN/zero rows, a
layout, a replay trial)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kforge.candidate import load_candidate
from kforge.evaluate.cases import LONG_ROW, MANY_ROWS, Layout
from kforge.evaluate.correctness import Check, Trial, verify
from kforge.evaluate.verifier import BORDERLINE_SEEDS
from kforge.evaluate.static import Rule, check_source
from kforge.ops import get_spec

CORPUS = Path(__file__).resolve().parent / "adversarial"
# Small shapes (Triton's interpreter is slow): a power-of-two width, an odd one, a tiny one; one
# secret shape and the secret seeds come from SECRET.
SECRET = 20240601
QUICK = dict(dtypes=(torch.float32,), shapes=((4, 64), (3, 100), (1, 17)), seeds=(0,), secret_seed=SECRET,
             secret_shapes=1)

STATIC = {
    "calls_reference": ("rms_norm", Rule.KFORGE),
    "calls_torch_ops_kforge": ("rms_norm", Rule.KFORGE),
    "calls_functional": ("softmax", Rule.TORCH),
    "host_tensor_math": ("fused_add_rms_norm", Rule.TORCH),
    "getattr_dispatch": ("softmax", Rule.DYNAMIC),
    "exec_string": ("softmax", Rule.DYNAMIC),
    "exception_fallback": ("rms_norm", Rule.FALLBACK),
    "reads_environment": ("softmax", Rule.ENVIRONMENT),
    "file_cache": ("softmax", Rule.FILESYSTEM),
    "patches_allclose": ("softmax", Rule.PATCH),
    "patches_timer": ("softmax", Rule.PATCH),
    "side_stream": ("softmax", Rule.STREAM),
    "hangs": ("softmax", Rule.HANG),
    "kills_process": ("softmax", Rule.PROCESS),
    # issue 14, class 1 (static-check escapes) and what the allow-list stops of class 3
    "static_core_exec": ("rms_norm", Rule.API),
    "static_core_import_open": ("rms_norm", Rule.API),
    "static_frame_reference": ("rms_norm", Rule.API),
    "static_getmodule_torch": ("rms_norm", Rule.API),
    "static_environ_reexport": ("rms_norm", Rule.API),
    "static_math_core_reexport": ("rms_norm", Rule.API),
    "static_module_as_value": ("rms_norm", Rule.DYNAMIC),
    "static_jit_direct_call": ("rms_norm", Rule.KERNEL_CALL),
    "static_jit_fn_attribute": ("rms_norm", Rule.KERNEL_CALL),
    "static_kernel_calls_host": ("rms_norm", Rule.KERNEL_CALL),
    "static_interpreter_handle": ("rms_norm", Rule.ATTRIBUTE),
    "static_make_subclass": ("rms_norm", Rule.PRIVATE),
    "static_lazy_subclass": ("rms_norm", Rule.CLASS),
    "static_module_state": ("rms_norm", Rule.GLOBAL_STATE),
    "static_mutable_default": ("rms_norm", Rule.GLOBAL_STATE),
    "static_domain_mutation": ("rms_norm", Rule.GLOBAL_STATE),
    "static_format_string": ("rms_norm", Rule.DYNAMIC),
    "static_type_hints": ("rms_norm", Rule.DYNAMIC),
    "static_module_getattr": ("rms_norm", Rule.DYNAMIC),
    "static_autotune_hook": ("rms_norm", Rule.API),
    "static_print_builtin": ("rms_norm", Rule.BUILTIN),
    "static_grid_metadata": ("rms_norm", Rule.TORCH),
    "static_coding_cookie": ("rms_norm", Rule.ENCODING),
    "static_alias_rebinding": ("softmax", Rule.PATCH),
}
# What the finding of that rule must name, so each is rejected for its own reason and not by a
# rule that happens to fire on the same file.
STATIC_WHY = {
    "static_core_exec": "triton.language.core.builtins.exec",
    "static_core_import_open": "imports triton.language.core",
    "static_frame_reference": "triton.language.core.inspect.currentframe",
    "static_getmodule_torch": "triton.language.core.inspect.getmodule",
    "static_environ_reexport": "triton.language.core.inspect.os.environ",
    "static_math_core_reexport": "triton.language.math.core",
    "static_module_as_value": "uses module tl as a value",
    "static_jit_direct_call": "host code uses kernel _compute",
    "static_jit_fn_attribute": "host code uses kernel _rms_norm_row",
    "static_kernel_calls_host": "a kernel uses host function _host",
    "static_interpreter_handle": "a kernel reads .handle",
    "static_make_subclass": "._make_subclass",
    "static_lazy_subclass": "defines class Lazy",
    "static_module_state": "module-level SEEN",
    "static_mutable_default": "default argument [0]",
    "static_domain_mutation": "uses DOMAIN from code",
    "static_format_string": ".format",
    "static_type_hints": "string annotation",
    "static_module_getattr": "defines __getattr__",
    "static_autotune_hook": "pre_hook",
    "static_print_builtin": "uses print",
    "static_grid_metadata": "reads tensor argument 'x_ptr' of _noop",
    "static_coding_cookie": "declares coding utf_7",
    "static_alias_rebinding": "binds math, an imported name",
}


def odd_width(verdict) -> bool:
    width = verdict.case.shape[-1]
    return width & (width - 1) != 0


# file -> (op, expected check, extra verify arguments, what must hold of the verdict)
DYNAMIC = {
    "returns_input": ("rms_norm", Check.ALIASES_INPUT, {}, lambda v: "aliases input 'x'" in v.reason),
    "cached_output": ("rms_norm", Check.STALE_OUTPUT, {}, lambda v: v.trial == Trial.REPEAT),
    "empty_output": ("softmax", Check.UNWRITTEN, {}, lambda v: "wrote none of the output" in v.reason),
    "edits_input": ("rms_norm", Check.MODIFIED_INPUT, {}, lambda v: "modified input 'x'" in v.reason),
    "partial_write": ("softmax", Check.UNWRITTEN, {},
                      lambda v: "wrote only part of the output: NaN at index (3, 0)" in v.reason),
    "power_of_two_only": ("softmax", Check.ERROR_BUDGET, {}, odd_width),
    "shape_table": ("rms_norm", Check.UNWRITTEN, {}, lambda v: v.case.secret and v.case.shape not in QUICK["shapes"]),
    "fp16_accumulation": ("rms_norm", Check.ERROR_BUDGET,
                          dict(dtypes=(torch.float16,), shapes=((4, 64), LONG_ROW), layouts=()),
                          lambda v: v.case.shape == LONG_ROW),
    "replay_data_ptr": ("rms_norm", Check.REPLAY, {}, lambda v: v.trial == Trial.REUSED_BUFFERS),
    "replay_content": ("softmax", Check.REPLAY, {}, lambda v: v.trial == Trial.NEW_BUFFERS),
    # Without eps, tiny inputs (x x 2^-10) are over budget before the zero row gives NaN.
    "nonfinite_no_eps": ("rms_norm", Check.ERROR_BUDGET, dict(dtypes=(torch.float16,)),
                         lambda v: v.case.variant is not None and v.case.variant.magnitude is not None),
    "drops_nan": ("softmax", Check.NAN_PROPAGATION, {}, lambda v: v.case.special),
    "nondeterministic": ("rms_norm", Check.NONDETERMINISTIC, {}, lambda v: v.trial == Trial.REPEAT),
    "ignores_strides": ("rms_norm", Check.NONFINITE, {}, lambda v: v.case.layout == Layout.SLICED_ROWS),
    # Classes 3 and 4 of issue 14: cheats the verification inputs could not see.
    "verify_ignores_eps": ("rms_norm", Check.ERROR_BUDGET, {},
                           lambda v: v.case.variant is not None and dict(v.case.variant.scalars).get("eps") != 1e-6),
    "verify_newton_rsqrt": ("rms_norm", Check.ERROR_BUDGET, {}, lambda v: v.case.variant.magnitude is not None),
    "verify_mean_square_window": ("rms_norm", Check.ERROR_BUDGET, {}, lambda v: v.case.variant.magnitude is not None),
    "verify_uniform_row_stride": ("rms_norm", Check.NONFINITE, dict(shapes=((4, 64), (2, 3, 40))),
                                  lambda v: v.case.layout == Layout.UNEVEN_ROWS),
    "verify_tile_rstd": ("rms_norm", Check.ERROR_BUDGET, dict(many_rows=True), lambda v: v.case.shape[0] == MANY_ROWS),
    "verify_replay_unless_nan": ("softmax", Check.REPLAY, {}, lambda v: v.trial == Trial.NEW_BUFFERS),
    "verify_output_ring": ("rms_norm", Check.STALE_OUTPUT, {}, lambda v: v.trial == Trial.STRESS),
    "verify_order_from_address": ("rms_norm", Check.NONDETERMINISTIC, {}, lambda v: v.trial == Trial.REPEAT),
    "verify_trusts_output_memory": ("rms_norm", Check.UNWRITTEN, {}, lambda v: "another poison" in v.reason),
    # Class 5: over its budget on about one seed in ten; the fixed borderline seeds find one.
    "verify_borderline_fp16": ("rms_norm", Check.ERROR_BUDGET,
                               dict(dtypes=(torch.float16,), shapes=((4, 64), (3, 100)), layouts=(), replay=False),
                               lambda v: v.case.seed in BORDERLINE_SEEDS),
}


# Cheats on rows (tests/test_trust_rows.py holds each to its reason): ROUTED are accepted at the
# shapes verified and never served beyond them; KERNELBENCH are for ops from tests/kernelbench/.
from test_trust_rows import KERNELBENCH, ROUTED  # noqa: E402

# Cheats only a GPU exposes (the interpreter runs programs one after another, in order).
GPU_ONLY = {
    "atomic_split_row": ("rms_norm", Check.NONDETERMINISTIC, dict(shapes=((64, 4096),), dtypes=(torch.float32,)),
                         lambda v: v.trial == Trial.REPEAT),
}


def test_the_corpus_is_complete_and_documented():
    files = {p.stem for p in CORPUS.glob("*.py")}
    assert files == set(STATIC) | set(DYNAMIC) | set(GPU_ONLY) | set(ROUTED) | set(KERNELBENCH)
    assert len(files) >= 15
    readme = (CORPUS / "README.md").read_text()
    assert all(f"| {name}.py |" in readme for name in files)


@pytest.mark.parametrize("name", STATIC)
def test_static_cheat_is_rejected_by_its_rule(name):
    op, rule = STATIC[name]
    findings = check_source((CORPUS / f"{name}.py").read_text(), get_spec(op))
    assert rule in {f.rule for f in findings}, findings


@pytest.mark.parametrize("name", STATIC_WHY)
def test_static_cheat_finding_names_its_escape(name):
    op, rule = STATIC[name]
    findings = check_source((CORPUS / f"{name}.py").read_text(), get_spec(op))
    assert any(f.rule == rule and STATIC_WHY[name] in f.message for f in findings), findings


@pytest.mark.parametrize("name", DYNAMIC)
def test_dynamic_cheat_passes_static_checks_and_is_rejected_for_its_reason(name):
    rejected_for_its_reason(name, *DYNAMIC[name], device="cpu")


# Dynamic cheats the allow-list now stops too (module state: a cache, a counter, a lookup table):
# the static rule must fire, and `verify` must still reject them alone (layers that each hold).
ALSO_STATIC = {name: Rule.GLOBAL_STATE for name in
               ("cached_output", "shape_table", "replay_data_ptr", "replay_content", "nondeterministic",
                "verify_replay_unless_nan", "verify_output_ring")}


def rejected_for_its_reason(name, op, check, extra, holds, device) -> None:
    spec = get_spec(op)
    path = CORPUS / f"{name}.py"
    findings = check_source(path.read_text(), spec)
    if name in ALSO_STATIC:
        assert ALSO_STATIC[name] in {f.rule for f in findings}, findings
    else:
        assert findings == []
    candidate = load_candidate(path, f"kforge_test_adversarial_{name}", spec)
    verdict = verify(spec, candidate.forward, device=device, domain=candidate.domain, **{**QUICK, **extra})
    assert not verdict.accepted
    assert verdict.check == check, verdict.reason
    assert holds(verdict), verdict.reason


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", GPU_ONLY)
def test_gpu_only_cheat_is_rejected_on_the_gpu(name):
    op, check, extra, holds = GPU_ONLY[name]
    rejected_for_its_reason(name, op, check, {"secret_shapes": 0, **extra}, holds, device="cuda")


def test_a_borderline_candidate_gets_the_same_verdict_on_every_run():
    """Ten runs, ten secret seeds (so other secret shapes and seeds): always rejected, on the same
    fixed seed, for the error budget."""
    spec = get_spec("rms_norm")
    path = CORPUS / "verify_borderline_fp16.py"
    candidate = load_candidate(path, "kforge_test_adversarial_borderline_runs", spec)
    verdicts = [verify(spec, candidate.forward, domain=candidate.domain, dtypes=(torch.float16,),
                       shapes=((4, 64), (3, 100)), seeds=(0,), secret_seed=run, secret_shapes=1, layouts=(),
                       replay=False) for run in range(10)]
    assert {(v.accepted, v.check) for v in verdicts} == {(False, Check.ERROR_BUDGET)}, [v.reason for v in verdicts]
