"""The kernel store and the candidate contract: content addressing, integrity re-checks on every
read, metadata, concurrent writers, and what a candidate file must define."""
from __future__ import annotations

import json
import multiprocessing
import os
import re
from pathlib import Path

import pytest

import kforge
from kforge.candidate import CandidateError, candidate_from_module, load_candidate, load_module, parse_domain
from kforge.records import Domain
from kforge.store import KernelIntegrityError, KernelStore, module_name, sha256_of

SOURCE = '''\
"""A stand-in candidate: no triton needed to test the store."""
DOMAIN = {"dtypes": ["float32,float32"], "contiguous": True, "align": 1, "dims": {"hidden": [1, 4096]}}

def forward(x, weight, eps=1e-6):
    return ("ran", x, weight, eps)
'''


@pytest.fixture
def store(kforge_home) -> KernelStore:
    return KernelStore()


def other_source(tag: str) -> str:
    return SOURCE + f"\nTAG = {tag!r}\n"


# -- put / get -----------------------------------------------------------------------------------
def test_put_get_round_trip_under_kforge_home(store, kforge_home):
    kernel = store.put(SOURCE, op="rms_norm", provider="catalog", attempt_id="a-1")
    sha = sha256_of(SOURCE.encode())
    assert kernel.sha256 == sha
    assert kernel.path == kforge_home / "kernels" / sha[:2] / f"{sha}.py"
    assert kernel.path.read_bytes() == SOURCE.encode()  # byte for byte
    assert kernel.impl_id == f"triton:{sha[:12]}"
    again = store.get(sha)
    assert again == kernel and again.source() == SOURCE


def test_put_is_idempotent_and_keeps_the_first_provenance(store):
    first = store.put(SOURCE, op="rms_norm", provider="catalog", attempt_id="a-1")
    second = store.put(SOURCE, op="rms_norm", provider="anthropic", attempt_id="a-2")
    assert second == first and second.attempt_id == "a-1" and second.provider == "catalog"
    files = sorted(p.name for p in store.root.rglob("*") if p.is_file())
    assert files == [f"{first.sha256}.json", f"{first.sha256}.py"]


def test_metadata_fields(store):
    parent = store.put(other_source("parent"), op="rms_norm", provider="catalog")
    kernel = store.put(SOURCE, op="rms_norm", provider="openai", parent=parent.sha256, attempt_id="run7/3")
    meta = json.loads(store.meta_path(kernel.sha256).read_text())
    assert meta["sha256"] == kernel.sha256
    assert (meta["op"], meta["provider"], meta["parent"], meta["attempt_id"]) == ("rms_norm", "openai", parent.sha256, "run7/3")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", meta["created"])
    assert meta["versions"]["kforge"] == kforge.__version__
    assert set(meta["versions"]) == {"kforge", "torch", "triton"} and all(meta["versions"].values())
    with pytest.raises(ValueError, match="parent"):
        store.put(SOURCE, op="rms_norm", provider="x", parent="not-a-sha")


def test_list_by_op(store):
    a = store.put(other_source("a"), op="rms_norm", provider="catalog")
    b = store.put(other_source("b"), op="softmax", provider="catalog")
    c = store.put(other_source("c"), op="rms_norm", provider="catalog")
    assert {k.sha256 for k in store.list()} == {a.sha256, b.sha256, c.sha256}
    assert {k.sha256 for k in store.list(op="rms_norm")} == {a.sha256, c.sha256}
    assert store.list(op="no_such_op") == []
    assert KernelStore(store.root / "nowhere").list() == []


def test_get_refuses_bad_names(store):
    for bad in ("abc", "A" * 64, "../" + "0" * 61, None):
        with pytest.raises(ValueError, match="sha256"):
            store.get(bad)


# -- integrity -----------------------------------------------------------------------------------
def tamper(path: Path) -> None:
    path.write_text(path.read_text().replace('"ran"', '"tampered"'))


def test_an_edited_kernel_is_refused_naming_sha_and_path(store):
    kernel = store.put(SOURCE, op="rms_norm", provider="catalog")
    assert store.load(kernel.sha256).forward(1, 2)[0] == "ran"  # imported and cached
    tamper(kernel.path)
    for read in (store.get, store.load):
        with pytest.raises(KernelIntegrityError) as err:
            read(kernel.sha256)
        message = str(err.value)
        assert kernel.sha256 in message and str(kernel.path) in message and "edited on disk" in message
        assert err.value.sha == kernel.sha256 and err.value.path == kernel.path
    with pytest.raises(KernelIntegrityError, match="edited on disk"):
        kernel.source()


def test_a_missing_kernel_or_metadata_is_refused(store):
    kernel = store.put(SOURCE, op="rms_norm", provider="catalog")
    store.meta_path(kernel.sha256).unlink()
    with pytest.raises(KernelIntegrityError, match="metadata file is missing"):
        store.get(kernel.sha256)
    kernel.path.unlink()
    with pytest.raises(KernelIntegrityError, match="missing") as err:
        store.load(kernel.sha256)
    assert kernel.sha256 in str(err.value)
    with pytest.raises(KernelIntegrityError, match="missing"):
        store.get("0" * 64)  # never stored


def test_put_restores_an_edited_copy(store):
    kernel = store.put(SOURCE, op="rms_norm", provider="catalog")
    tamper(kernel.path)
    store.put(SOURCE, op="rms_norm", provider="catalog")
    assert kernel.path.read_text() == SOURCE and store.get(kernel.sha256) == kernel


def test_load_runs_the_verified_bytes_and_writes_no_bytecode(store):
    kernel = store.put(other_source("bytes"), op="rms_norm", provider="catalog")
    candidate = store.load(kernel.sha256)
    assert candidate.module.__name__ == module_name(kernel.sha256) == f"kforge_kernel_{kernel.sha256[:16]}"
    assert candidate.domain == Domain(dtypes=("float32,float32",), contiguous=True, dims={"hidden": (1, 4096)})
    assert store.load(kernel.sha256).module is candidate.module  # imported once per process
    assert not list(store.root.rglob("__pycache__")), "a .pyc next to a kernel could run unverified code"


# -- concurrent writers ----------------------------------------------------------------------------
def _put_in_child(root: str, attempt: str, barrier, results) -> None:
    barrier.wait()
    kernel = KernelStore(Path(root)).put(SOURCE, op="rms_norm", provider="catalog", attempt_id=attempt)
    results.put((kernel.sha256, kernel.attempt_id))


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # children only write files
def test_concurrent_puts_of_the_same_source_leave_one_file(store):
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_put_in_child, args=(str(store.root), f"p{i}", barrier, results)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    seen = [results.get(timeout=5) for _ in procs]
    sha = sha256_of(SOURCE.encode())
    assert {s for s, _ in seen} == {sha}
    assert len({a for _, a in seen}) == 1, "every writer must see the one metadata record that won"
    files = sorted(p.name for p in store.root.rglob("*") if p.is_file())
    assert files == [f"{sha}.json", f"{sha}.py"], files  # no temp files left behind either
    assert store.get(sha).attempt_id == seen[0][1]


# -- the candidate contract ------------------------------------------------------------------------
def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_candidate_needs_a_callable_forward(tmp_path):
    with pytest.raises(CandidateError, match="defines no forward"):
        load_candidate(write(tmp_path, "none.py", "x = 1\n"), "kforge_test_cand_none")
    with pytest.raises(CandidateError, match="forward is a int"):
        load_candidate(write(tmp_path, "int.py", "forward = 3\n"), "kforge_test_cand_int")
    with pytest.raises(CandidateError, match="import failed: ZeroDivisionError"):
        load_candidate(write(tmp_path, "boom.py", "1 / 0\n"), "kforge_test_cand_boom")
    with pytest.raises(CandidateError, match="cannot read"):
        load_candidate(tmp_path / "absent.py", "kforge_test_cand_absent")


@pytest.mark.parametrize("domain, message", [
    ("[1, 2]", "must be a dict"),
    ("{'contigous': True}", r"unknown keys \['contigous'\]"),
    ("{'dtypes': 'float32'}", "list of dtype signatures"),
    ("{'dtypes': ['float32,floaty']}", "'floaty' in 'float32,floaty' is not a torch dtype"),
    ("{'contiguous': 1}", "True or False"),
    ("{'align': 3}", "align must be 1, 2, 4, 8 or 16"),
    ("{'dims': {'hidden': [8]}}", r"\[lo, hi\] integers"),
    ("{'dims': {'hidden': [9, 8]}}", "lo <= hi"),
])
def test_a_bad_domain_is_refused_clearly(tmp_path, domain, message):
    path = write(tmp_path, "cand.py", f"DOMAIN = {domain}\ndef forward(x, weight, eps=1e-6):\n    return x\n")
    module = load_module(path, f"kforge_test_cand_domain_{abs(hash(domain))}")
    with pytest.raises(CandidateError, match=message):
        candidate_from_module(module)


def test_a_candidate_is_checked_against_its_op(tmp_path):
    spec = kforge.ops.SPECS["rms_norm"]
    wrong_arity = write(tmp_path, "arity.py", "def forward(x):\n    return x\n")
    with pytest.raises(CandidateError, match="forward cannot take rms_norm's arguments"):
        load_candidate(wrong_arity, "kforge_test_cand_arity", spec)
    wrong_dim = write(tmp_path, "dim.py", "DOMAIN = {'dims': {'cols': [1, 8]}}\ndef forward(x, w, eps):\n    return x\n")
    with pytest.raises(CandidateError, match=r"dims \['cols'\] are not dims of rms_norm"):
        load_candidate(wrong_dim, "kforge_test_cand_dim", spec)
    wrong_sig = write(tmp_path, "sig.py", "DOMAIN = {'dtypes': ['float32']}\ndef forward(x, w, eps):\n    return x\n")
    with pytest.raises(CandidateError, match="one dtype per tensor argument"):
        load_candidate(wrong_sig, "kforge_test_cand_sig", spec)
    no_domain = write(tmp_path, "ok.py", "def forward(x, weight, eps=1e-6):\n    return x\n")
    assert load_candidate(no_domain, "kforge_test_cand_ok", spec).domain == Domain()


def test_a_module_name_is_never_reused_for_another_file(tmp_path):
    a = write(tmp_path, "a.py", "def forward(x):\n    return x\n")
    b = write(tmp_path, "b.py", "def forward(x):\n    return x\n")
    assert load_module(a, "kforge_test_cand_name") is load_module(a, "kforge_test_cand_name")
    with pytest.raises(CandidateError, match="already taken"):
        load_module(b, "kforge_test_cand_name")


def test_parse_domain_round_trips():
    raw = {"dtypes": ["bfloat16,float32"], "contiguous": True, "align": 16, "dims": {"hidden": [1, 65536]}}
    assert parse_domain(raw).to_json() == raw
    assert parse_domain(None) == Domain()


def test_the_store_is_runtime_only():
    """The store and the candidate contract sit in the runtime: no offline imports, no triton."""
    import subprocess
    import sys

    code = ("import sys, kforge.store, kforge.candidate, kforge.catalog; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('triton', 'anthropic', 'openai', 'ray') "
            "or m.startswith(('kforge.evaluate', 'kforge.gen', 'kforge.cli'))]; print(bad)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
