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
from kforge.evaluate.correctness import LONG_ROW, Check, Layout, Trial, verify
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
    "nonfinite_no_eps": ("rms_norm", Check.NONFINITE, dict(dtypes=(torch.float16,)), lambda v: v.case.special),
    "drops_nan": ("softmax", Check.NAN_PROPAGATION, {}, lambda v: v.case.special),
    "nondeterministic": ("rms_norm", Check.NONDETERMINISTIC, {}, lambda v: v.trial == Trial.REPEAT),
    "ignores_strides": ("rms_norm", Check.NONFINITE, {}, lambda v: v.case.layout == Layout.SLICED_ROWS),
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


@pytest.mark.parametrize("name", DYNAMIC)
def test_dynamic_cheat_passes_static_checks_and_is_rejected_for_its_reason(name):
    rejected_for_its_reason(name, *DYNAMIC[name], device="cpu")


def rejected_for_its_reason(name, op, check, extra, holds, device) -> None:
    spec = get_spec(op)
    path = CORPUS / f"{name}.py"
    assert check_source(path.read_text(), spec) == []
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
