"""Prompts (`kforge.gen.prompt`): messages rendered from template files, with the op's data, the
device, knowledge, prior variants and feedback; feedback from evaluations."""
from __future__ import annotations

import inspect
import re
import shutil

import pytest
import torch

import kforge.gen.prompts as prompts
from kforge.catalog import seeds
from kforge.evaluate.harness import Evaluation, Measurement
from kforge.evaluate.roofline import Ceilings, RooflineResult
from kforge.evaluate.timing import Timing
from kforge.gen import knowledge
from kforge.evaluate.static import check_source
from kforge.gen.extract import EVOLVE_END, EVOLVE_START, ExtractionError, extract_source
from kforge.gen.knowledge import Entry, Outcome
from kforge.gen.prompt import (Feedback, FeedbackKind, PriorVariant, build_messages, feedback_from_answer,
                               feedback_from_evaluation, truncate)
from kforge.gen.types import Role
from kforge.ops import SPECS, get_spec
from kforge.records import DispatchKey

DEVICE = "cuda|NVIDIA H100 80GB HBM3|sm90|torch2.11|triton3.6"
CEILINGS = Ceilings(copy_gbps=3012.5, matmul_tflops=734.2, device=DEVICE, measured_at="2026-11-22T10:00:00+00:00")
SEED = seeds(SPECS["rms_norm"])[0].read_text()
PLACEHOLDER = re.compile(r"\$(\{?[A-Za-z_][A-Za-z0-9_]*\}?)")


def build(op="rms_norm", **kw):
    args = dict(device=DEVICE, ceilings=CEILINGS, triton_version="3.9.0", dtypes=[torch.bfloat16],
                shapes=[(32, 4096), (16384, 8192)], knowledge=(), priors=(), feedback=(), parent_source=None,
                evolve=False)
    args.update(kw)
    system, user = build_messages(get_spec(op), **args)
    assert system.role is Role.SYSTEM and user.role is Role.USER
    return system.content, user.content


def test_templates_are_real_files_in_the_package():
    names = {p.name for p in prompts.PROMPTS_DIR.iterdir()}
    assert {"system.md", "task.md", "feedback.md", "fix_format.md", "fix_static.md", "ask_evolve.md",
            "triton_versions.json"} <= names
    assert prompts.PROMPTS_DIR == (knowledge.BUNDLED_DIR.parent / "prompts")


def test_prose_comes_from_the_template_files(tmp_path, monkeypatch):
    copy = tmp_path / "prompts"
    shutil.copytree(prompts.PROMPTS_DIR, copy)
    (copy / "system.md").write_text("You are a test. Imports allowed: $allowed_imports\n$torch_allowed "
                                    "$tensor_methods $triton_allowed\n")
    (copy / "ask_new.md").write_text("Write $op now, please.\n")
    monkeypatch.setattr(prompts, "PROMPTS_DIR", copy)
    prompts.template_text.cache_clear()
    try:
        system, user = build()
    finally:
        prompts.template_text.cache_clear()
    assert system.startswith("You are a test. Imports allowed: `torch`, `triton`")
    assert user.endswith("Write rms_norm now, please.")


def test_task_holds_the_reference_shapes_ceilings_and_triton_version():
    system, user = build()
    assert inspect.getsource(get_spec("rms_norm").reference).strip() in user
    assert "def accumulate_dtype" in user  # the helper the reference calls
    assert "`rms_norm(Tensor x, Tensor weight, float eps=1e-06) -> Tensor`" in user
    assert "forward(x, weight, eps=1e-06)" in user
    assert "| 32x4096 | rows=32, hidden=4096 | bfloat16 |" in user
    assert "| 16384x8192 | rows=16384, hidden=8192 | bfloat16 | 537M |" in user
    # floor = bytes / copy rate: 2 * 16384 * 8192 * 2 + 8192 * 2 bytes at 3012.5 GB/s
    assert f"| {(2 * 16384 * 8192 * 2 + 8192 * 2) / 3012.5e3:.2f} |" in user
    assert "copy 3012 GB/s" in user and "734.2 TFLOP/s" in user and DEVICE in user
    assert "Triton 3.9.0" in user and "tl.make_block_ptr" in user
    assert "torch.empty_like" in system and "triton.next_power_of_2" in system  # the checker's allow-lists
    for text in (system, user):
        assert not PLACEHOLDER.search(text), PLACEHOLDER.search(text)


def test_without_ceilings_there_is_no_floor():
    _, user = build(ceilings=None, shapes=[(4, 64)], dtypes=["float32"])
    assert "No ceilings were measured" in user
    assert "| 4x64 | rows=4, hidden=64 | float32 | 2.3K | 1.02K | n/a |" in user


def test_fused_op_shows_two_outputs_and_its_own_knowledge():
    entries = knowledge.load("fused_add_rms_norm")
    _, user = build("fused_add_rms_norm", knowledge=entries)
    assert "Outputs: 2" in user and "return y.to(x.dtype), h.to(x.dtype)" in user
    assert "fused_add_rms_norm: sum in fp32, normalise the sum, return (y, h)" in user


def test_knowledge_entries_are_shown_and_other_triton_versions_marked_unverified():
    here = Entry("Verified here", Outcome.SUCCESS, "Use 8 warps at 4096.", gpu="H100", triton=("3.9",),
                 measured="4096x4096: 27.7 us")
    elsewhere = Entry("Seen on 3.6", Outcome.FAILURE, "32 warps at 4096 are slow.", gpu="H100", triton=("3.6",))
    _, user = build(knowledge=[here, elsewhere])
    section = user[user.index("### [success] Verified here"):]
    first, second = section.split("### [failure] Seen on 3.6")
    assert "Use 8 warps at 4096." in first and "Measured: 4096x4096: 27.7 us" in first
    assert "UNVERIFIED" not in first
    assert "UNVERIFIED HERE: recorded under Triton 3.6; this machine runs Triton 3.9." in second
    assert "32 warps at 4096 are slow." in second
    _, without = build()
    assert "What is known about this op family" not in without  # no entries, no section


def test_priors_show_their_numbers_best_first_and_the_best_sources():
    slow_src = SEED.replace("MIN_BLOCK = 16", "MIN_BLOCK = 64")
    priors = [PriorVariant("b" * 64, slow_src, 250.25, 1.11, 0.71, (16384, 8192), "bfloat16"),
              PriorVariant("a" * 64, SEED, 182.6, 1.52, 0.976, (16384, 8192), "bfloat16"),
              PriorVariant("a" * 64, SEED, 6.1, 1.8, None, (32, 4096), "bfloat16")]
    _, user = build(priors=priors)
    assert "| aaaaaaaaaaaa | 32x4096 | bfloat16 | 6.10 | 1.80x | n/a |" in user
    assert "| aaaaaaaaaaaa | 16384x8192 | bfloat16 | 182.60 | 1.52x | 98% |" in user
    assert "| bbbbbbbbbbbb | 16384x8192 | bfloat16 | 250.25 | 1.11x | 71% |" in user
    assert user.index("| 6.10 |") < user.index("| 182.60 |") < user.index("| 250.25 |")
    assert SEED.rstrip() in user and slow_src.rstrip() in user
    assert user.count("MIN_BLOCK = 16\n") == 1  # one source per distinct variant


def test_feedback_text_is_rendered_newest_last():
    feedback = [Feedback(FeedbackKind.COMPILE, "CompilationError: at 12:8: arange's range must be a power of 2"),
                Feedback(FeedbackKind.CORRECTNESS, "error-budget: error 0.5 over budget 0.01 at index (2, 17)",
                         "shape (3, 1000) bfloat16 seed 1")]
    _, user = build(feedback=feedback)
    assert "arange's range must be a power of 2" in user
    assert "Case: shape (3, 1000) bfloat16 seed 1" in user
    assert user.index("### compile") < user.index("### correctness")


def test_parent_without_evolve_asks_for_an_improved_whole_file():
    _, user = build(parent_source=SEED)
    assert SEED.rstrip() in user and "complete new file" in user


def test_evolve_asks_for_the_region_only():
    tunables = "MIN_BLOCK = 16\n"
    parent = SEED.replace(tunables, f"{EVOLVE_START}\n{tunables}{EVOLVE_END}\n")
    _, user = build(parent_source=parent, evolve=True)
    assert f"{EVOLVE_START}\nMIN_BLOCK = 16\n{EVOLVE_END}" in user
    assert "holds only the new region" in user
    _, plain = build(parent_source=SEED, evolve=True)  # no markers: the whole file
    assert "complete new file" in plain
    with pytest.raises(ExtractionError):
        build(parent_source=parent.replace(EVOLVE_END, ""), evolve=True)


def _timing(p50):
    return Timing(p20_us=p50 * 0.98, p50_us=p50, p80_us=p50 * 1.02, host_us=p50, kind="cuda_events", reps=100)


COMPILATION_ERROR = ("triton.compiler.errors.CompilationError",)


@pytest.mark.parametrize("check,reason,types,kind", [
    ("static:torch-compute", "static check: line 40: [torch-compute] calls torch.nn.functional.rms_norm", (),
     FeedbackKind.STATIC),
    ("raised", "rms_norm (3, 1000) bfloat16: raised CompilationError: at 12:8: arange's range must be a power of 2",
     COMPILATION_ERROR, FeedbackKind.COMPILE),
    ("raised", "rms_norm (3, 1000) bfloat16: raised InterpreterError: at 3:4: bad load",
     ("triton.runtime.errors.InterpreterError", "builtins.ValueError"), FeedbackKind.COMPILE),
    # The exception's type decides, not its text: a ValueError that mentions a CompilationError is no compile error.
    ("raised", "rms_norm (3, 1000) bfloat16: raised ValueError: not a CompilationError", ("builtins.ValueError",),
     FeedbackKind.OTHER),
    ("worker:error", "worker error: CandidateImportError: candidate k.py: import failed: NameError: name 'tl' is "
     "not defined", ("kforge.candidate.CandidateImportError", "builtins.NameError"), FeedbackKind.COMPILE),
    ("worker:error", "worker error: ZeroDivisionError: division by zero", ("builtins.ZeroDivisionError",),
     FeedbackKind.OTHER),
    ("error-budget", "rms_norm output 0: error 0.5 over budget 0.01 at index (2, 17): got 1.5, expected 1", (),
     FeedbackKind.CORRECTNESS),
    ("nan-propagation", "finite where the reference is NaN", (), FeedbackKind.CORRECTNESS),
    ("worker:timeout", "worker timeout: no result in 600 s", (), FeedbackKind.OTHER),
    ("roofline", "faster than the roofline floor twice", (), FeedbackKind.TIMING),
])
def test_feedback_from_a_rejection(check, reason, types, kind):
    ev = Evaluation("rms_norm", False, reason, check=check, case="shape (3, 1000) bfloat16 seed 1", error_types=types)
    fb = feedback_from_evaluation(ev)
    assert fb.kind is kind
    assert reason in fb.message and check in fb.message
    assert fb.case == "shape (3, 1000) bfloat16 seed 1"


def test_feedback_from_an_accepted_kernel_gives_time_against_vendor_and_roofline():
    key = DispatchKey("rms_norm", DEVICE, "bfloat16,bfloat16", (16384, 8192))
    roof = RooflineResult(gbps=1900.0, tflops=1.9, fraction_of_ceiling=0.63, bound="memory", floor_us=178.2)
    ev = Evaluation("rms_norm", True, "", measurements=[Measurement((16384, 8192), "bfloat16", key, _timing(282.5),
                                                                    _timing(277.3), roof)])
    fb = feedback_from_evaluation(ev)
    assert fb.kind is FeedbackKind.TIMING
    assert "16384x8192 bfloat16: 282.50 us p50 against vendor 277.30 us (0.98 x vendor)" in fb.message
    assert "memory-bound, at 63% of the roofline (floor 178.20 us; 1900 GB/s achieved)" in fb.message
    untimed = feedback_from_evaluation(Evaluation("rms_norm", True, "", skipped=[
        {"shape": [1, 70000], "dtype": "bfloat16", "why": "hidden 70000 outside [1, 65536]"}]))
    assert "hidden 70000 outside [1, 65536]" in untimed.message


def test_long_texts_keep_head_and_tail():
    text = "CompilationError: in _kernel\n" + "frame\n" * 3000 + "ValueError: arange's range must be a power of 2"
    cut = truncate(text, 600)
    assert len(cut) < 700
    assert cut.startswith("CompilationError: in _kernel") and cut.endswith("arange's range must be a power of 2")
    assert "characters cut" in cut
    ev = Evaluation("rms_norm", False, text, check="raised")
    assert len(feedback_from_evaluation(ev).message) < 2200


def test_feedback_from_an_unusable_answer():
    with pytest.raises(ExtractionError) as err:
        extract_source("One program per row, fp32 sums.")
    fb = feedback_from_answer(err.value)
    assert fb.kind is FeedbackKind.FORMAT and fb.message == str(err.value)
    findings = check_source("import os\n\ndef forward(x):\n    return x\n", get_spec("softmax"))
    fb = feedback_from_answer(findings)
    assert fb.kind is FeedbackKind.STATIC and "imports os" in fb.message
