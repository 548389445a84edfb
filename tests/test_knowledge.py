"""The knowledge base (`kforge.gen.knowledge`): markdown entries, bundled and user files, scoping."""
from __future__ import annotations

import multiprocessing

import pytest
import torch

from kforge.gen import knowledge
from kforge.gen.knowledge import Entry, KnowledgeError, Origin, Outcome

H100 = "cuda|NVIDIA H100 80GB HBM3|sm90|torch2.11|triton3.6"


def entry(title: str = "Pack rows", **kw) -> Entry:
    fields = dict(outcome=Outcome.SUCCESS, text="Load a [ROWS, BLOCK] tile.\n\nReduce along axis=1.", gpu="H100",
                  dtypes=("bfloat16",), shapes="hidden<=256", triton=("3.6",), measured="65536x128: 16.2 us | vendor 46.2 us",
                  recorded="2026-11-22, attempt 0123abcd")
    fields.update(kw)
    return Entry(title=title, **fields)


def test_bundled_files_parse_and_cover_the_families():
    rms = knowledge.load("rms_norm")
    fused = knowledge.load("fused_add_rms_norm")
    softmax = knowledge.load("softmax")
    assert knowledge.family("fused_add_rms_norm") == "rms_norm"
    assert len(rms) >= 5 and len(softmax) >= 5
    assert all(e.origin is Origin.BUNDLED for e in rms + softmax)
    # The fused-only entry is in the family file but served to fused_add_rms_norm alone.
    fused_only = [e for e in fused if e.op == "fused_add_rms_norm"]
    assert fused_only and not any(e.op for e in rms)
    assert {Outcome.SUCCESS, Outcome.FAILURE} <= {e.outcome for e in rms}
    assert any("make_block_ptr" in e.title for e in softmax)


def test_the_families_are_the_specs_and_every_bundled_file_belongs_to_one():
    """`family` reads the op's spec (no table of its own): an op that names no family, and an
    op not registered here (a user's), is a family of its own; every bundled file is some
    registered op's family, so a renamed family cannot orphan its file."""
    from kforge.ops import SPECS

    named = {op: spec.knowledge_family for op, spec in SPECS.items() if spec.knowledge_family is not None}
    assert named == {"fused_add_rms_norm": "rms_norm"}
    assert all(knowledge.family(op) == (named.get(op) or op) for op in SPECS)
    assert knowledge.family("some_user_op") == "some_user_op"
    families = {knowledge.family(op) for op in SPECS}
    assert {p.stem for p in knowledge.BUNDLED_DIR.glob("*.md")} <= families


def test_append_then_load_round_trips_every_field():
    e = entry()
    path = knowledge.append("rms_norm", e)
    assert path == knowledge.user_file("rms_norm") and path.is_relative_to(knowledge.paths.home())
    loaded = [x for x in knowledge.load("rms_norm") if x.origin is Origin.USER]
    assert loaded == [e]
    assert loaded[0].text == "Load a [ROWS, BLOCK] tile.\n\nReduce along axis=1."
    assert loaded[0].measured == "65536x128: 16.2 us | vendor 46.2 us"
    # The family shares one user file: fused_add_rms_norm sees the entry too.
    assert e in knowledge.load("fused_add_rms_norm")
    text = path.read_text()
    assert "### [success] Pack rows\n- gpu: H100 | dtype: bfloat16 | shapes: hidden<=256 | triton: 3.6\n" in text


def test_an_entry_scoped_to_one_op_stays_with_it():
    knowledge.append("fused_add_rms_norm", entry("Store h first", op="fused_add_rms_norm", dtypes=()))
    assert any(e.title == "Store h first" for e in knowledge.load("fused_add_rms_norm"))
    assert not any(e.title == "Store h first" for e in knowledge.load("rms_norm"))


def test_relevant_filters_by_gpu_and_dtype_and_puts_verified_entries_first():
    entries = [
        entry("h100 bf16 on 3.6"),
        entry("any gpu, any dtype, any triton", gpu="any", dtypes=(), triton=()),
        entry("h200 only", gpu="H200", triton=("3.9",)),
        entry("fp32 only", gpu="any", dtypes=("float32",), triton=("3.9",)),
    ]
    titles = [e.title for e in knowledge.relevant(entries, H100, torch.bfloat16, "3.9.0")]
    assert titles == ["any gpu, any dtype, any triton", "h100 bf16 on 3.6"]
    titles = [e.title for e in knowledge.relevant(entries, H100, ["float32", "bfloat16"], "3.6.0")]
    assert titles == ["h100 bf16 on 3.6", "any gpu, any dtype, any triton", "fp32 only"]
    assert len(knowledge.relevant(entries, None, None)) == 4  # nothing known: everything applies


def test_unverified_means_recorded_under_another_triton():
    e = entry(triton=("3.6",))
    assert e.unverified("3.9.0") and not e.unverified("3.6.2")
    assert not entry(triton=()).unverified("3.9.0")
    assert not entry(triton=("3.6", "3.9")).unverified("3.9.1")


@pytest.mark.parametrize("bad", [
    dict(title="two\nlines"),
    dict(gpu="H100 | H200"),
    dict(dtypes=("bf16",)),
    dict(triton=("three",)),
    dict(text="### [failure] a second entry inside the text"),
    dict(text="  "),
])
def test_entries_that_would_not_read_back_are_refused(bad):
    with pytest.raises(KnowledgeError):
        entry(**bad)


def test_a_malformed_user_file_is_an_error_naming_the_line():
    path = knowledge.user_file("softmax")
    path.parent.mkdir(parents=True)
    path.write_text("# mine\n\n### [success] fine\n- gpu: any | dtype: any | shapes: any | triton: any\n\nok\n\n"
                    "### [maybe] what\n- gpu: any | dtype: any | shapes: any | triton: any\n\ntext\n")
    with pytest.raises(KnowledgeError, match=r"softmax\.md:8: outcome \[maybe\]"):
        knowledge.load("softmax")
    with pytest.raises(KnowledgeError):  # never extend a file that does not parse
        knowledge.append("softmax", entry())
    path.write_text("### [success] no scope\n\ntext\n")
    with pytest.raises(KnowledgeError, match="scope"):
        knowledge.load("softmax")


def _append_many(worker: int, count: int) -> None:
    for i in range(count):
        knowledge.append("softmax", entry(f"worker {worker} entry {i}", gpu="any"))


def test_concurrent_appends_from_two_processes_lose_nothing():
    ctx = multiprocessing.get_context("spawn")  # KFORGE_HOME travels in the environment
    procs = [ctx.Process(target=_append_many, args=(w, 15)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    titles = [e.title for e in knowledge.load("softmax") if e.origin is Origin.USER]
    assert sorted(titles) == sorted(f"worker {w} entry {i}" for w in range(2) for i in range(15))
    # Each writer's own entries stay in the order it wrote them.
    for w in range(2):
        mine = [t for t in titles if t.startswith(f"worker {w} ")]
        assert mine == [f"worker {w} entry {i}" for i in range(15)]


def _variant(speedup, fraction=0.82):
    import types

    source = '"""Two rows per program,\nfp32 sums.\n\nDetails nobody needs."""\nimport triton\n'
    measurement = {"shape": [16384, 8192], "dtype": "bfloat16", "candidate": {"p50_us": 182.6},
                   "vendor": {"p50_us": 277.3}, "speedup_vs_vendor": 1.52}
    return types.SimpleNamespace(sha256="c" * 64, attempt_id="20261122-abc", source=source, speedup=speedup,
                                 fraction=fraction, measurements=[measurement])


def test_record_run_appends_a_scoped_entry_from_the_best_variant():
    e = knowledge.record_run("rms_norm", gpu="NVIDIA H100 80GB HBM3", dtypes=["bfloat16"], shapes=[[16384, 8192]],
                             triton_version="3.6.0", best=_variant(1.52), attempts=12, accepted=5)
    assert e.outcome is Outcome.SUCCESS and e.op == "rms_norm" and e.triton == ("3.6",)
    assert e.shapes == "16384x8192" and e.dtypes == ("bfloat16",)
    assert e.measured == "16384x8192 bfloat16: 182.60 us against vendor 277.30 us (1.52x)"
    assert "12 attempts, 5 of them correct" in e.text and "82% of the roofline" in e.text
    assert "Two rows per program, fp32 sums." in e.text and "nobody" not in e.text
    assert e in knowledge.load("rms_norm") and e not in knowledge.load("fused_add_rms_norm")
    assert knowledge.relevant([e], H100, "bfloat16", "3.9.0") == [e] and e.unverified("3.9.0")
    slow = knowledge.record_run("rms_norm", gpu="NVIDIA H100 80GB HBM3", dtypes=["bfloat16"], shapes=[[32, 4096]],
                                triton_version="3.6.0", best=_variant(0.8, fraction=None), attempts=3, accepted=1)
    assert slow.outcome is Outcome.FAILURE and "roofline" not in slow.text
