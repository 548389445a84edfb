"""The bundled table's kernels (`kforge.store.BundledKernels`): a catalog seed is shipped once, in
`kforge/catalog/`, and the bundled store's metadata names it by file; any other kernel is a copy
under `kforge/tables/kernels/`. Either way the kernel must hash to the sha256 its records name:
a seed edited by one byte is refused with one warning and vendor serves. The routed tests run the
real Triton backend (CPU tensors in Triton's interpreter)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import warnings

import pytest
import torch

import kforge
from helpers import make_record
from kforge.backends.triton import TritonBackend, impl_id
from kforge.catalog import CATALOG_DIR
from kforge.device import fingerprint
from kforge.records import Domain
from kforge.router import dispatch
from kforge.router.dispatch import KforgeFallbackWarning
from kforge.router.table import Layer, ScoreTable
from kforge.store import BundledKernels, KernelIntegrityError, KernelStore
from kforge.testing import assert_matches_reference

OP = "rms_norm"
SEED_FILE = "rms_norm_rowwise.py"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPE = (4, 64)
DOMAIN = Domain(dtypes=("float32,float32",), contiguous=True, dims={"hidden": (1, 65536)})
needs_triton = pytest.mark.skipif(TritonBackend().available() is not None,
                                  reason=f"Triton cannot run here: {TritonBackend().available()}")


def sha_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bundle_seed(tmp_path, monkeypatch, catalog_dir=CATALOG_DIR) -> str:
    """A bundled table under tmp_path naming the catalog seed SEED_FILE by reference, with one
    0.5 us record for it at SHAPE in the bundled layer; returns the seed's sha256."""
    bundled = tmp_path / "bundled"
    kernels = BundledKernels(bundled / "kernels", catalog_dir=catalog_dir)
    sha = kernels.put((catalog_dir / SEED_FILE).read_text(), op=OP, provider="catalog").sha256
    record = make_record(OP, SHAPE, impl=impl_id(sha), p50=0.5, domain=DOMAIN, device=str(fingerprint(DEVICE)))
    layer = Layer("bundled", bundled, single_file=False, writable=False)
    ScoreTable(layers=[layer]).write([dataclasses.replace(record, source_sha256=sha, provider="catalog")], layer=layer)
    monkeypatch.setenv("KFORGE_BUNDLED_TABLE", str(bundled))
    dispatch.reset()
    return sha


def served_by(times: int) -> dict:
    spec = kforge.ops.SPECS[OP]
    for seed in range(times):
        args = spec.make_inputs(SHAPE, torch.float32, DEVICE, seed)
        assert_matches_reference(spec, args, kforge.ops.rms_norm(*args))
    return kforge.stats()["ops"][OP]["by_impl"]


def test_a_seed_is_bundled_by_reference_not_copied(tmp_path):
    kernels = BundledKernels(tmp_path / "kernels")
    kernel = kernels.put((CATALOG_DIR / SEED_FILE).read_text(), op=OP, provider="catalog")
    assert kernel.sha256 == sha_of(CATALOG_DIR / SEED_FILE) and kernel.path == CATALOG_DIR / SEED_FILE
    assert not KernelStore(tmp_path / "kernels").source_path(kernel.sha256).exists()  # no copy
    assert json.loads(kernels.meta_path(kernel.sha256).read_text())["catalog"] == SEED_FILE
    assert kernels.holds(kernel.sha256) and kernels.get(kernel.sha256).op == OP
    other = (CATALOG_DIR / SEED_FILE).read_text() + "\n# not a seed\n"  # any other kernel: a copy
    copied = kernels.put(other, op=OP, provider="user")
    assert copied.path == KernelStore(tmp_path / "kernels").source_path(copied.sha256) and copied.source() == other


def test_a_reference_out_of_the_catalog_is_refused(tmp_path):
    kernels = BundledKernels(tmp_path / "kernels")
    sha = kernels.put((CATALOG_DIR / SEED_FILE).read_text(), op=OP, provider="catalog").sha256
    meta = json.loads(kernels.meta_path(sha).read_text())
    for name in ("../paths.py", "/etc/passwd", "__init__.py", 3):
        kernels.meta_path(sha).write_text(json.dumps({**meta, "catalog": name}))
        with pytest.raises(KernelIntegrityError, match="not a catalog seed file"):
            kernels.get(sha)


@needs_triton
def test_a_bundled_seed_is_served_by_reference(tmp_path, monkeypatch):
    sha = bundle_seed(tmp_path, monkeypatch)
    assert served_by(2) == {impl_id(sha): 2}


@needs_triton
def test_a_seed_edited_by_one_byte_makes_its_bundled_records_refused(tmp_path, monkeypatch):
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    shutil.copy(CATALOG_DIR / SEED_FILE, catalog / SEED_FILE)
    sha = bundle_seed(tmp_path, monkeypatch, catalog_dir=catalog)
    monkeypatch.setattr(kforge.store, "CATALOG_DIR", catalog)  # the backend's BundledKernels reads it
    data = bytearray((catalog / SEED_FILE).read_bytes())
    data[-1:] = b" " if data[-1:] != b" " else b"\n"  # one byte: the kernel still runs as before
    (catalog / SEED_FILE).write_bytes(bytes(data))
    assert sha_of(catalog / SEED_FILE) != sha
    with pytest.warns(KforgeFallbackWarning, match="edited on disk") as caught:
        assert served_by(1) == {"vendor": 1}
    assert len([w for w in caught if issubclass(w.category, KforgeFallbackWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert served_by(2) == {"vendor": 3}


def test_no_bundled_file_duplicates_a_catalog_source():
    """The shipped bundled store holds each catalog seed by reference only, and each reference
    names a seed that hashes to the kernel's sha256."""
    root = kforge.paths.BUNDLED_TABLE_DIR / "kernels"
    seeds = {sha_of(p): p.name for p in CATALOG_DIR.glob("*.py") if p.name != "__init__.py"}
    copies = {p.relative_to(root).as_posix(): seeds[sha_of(p)] for p in root.rglob("*") if p.is_file()
              and sha_of(p) in seeds}
    assert not copies, f"copies of catalog seeds under {root} (bundle them by reference): {copies}"
    kernels = BundledKernels(root)
    for meta in sorted(root.glob("??/*.json")):
        name = kernels.catalog_file(meta.stem)
        if name is not None:
            assert seeds.get(meta.stem) == name, (meta, name)


def test_a_published_seed_is_named_by_reference_in_the_pull_request(github_fake):
    """`kforge issue publish` of a run whose winner is a catalog seed unchanged adds the seed's
    metadata to tables/kernels/, naming the seed, and no copy of its bytes."""
    from kforge.issues.github import GitHub
    from kforge.issues.publish import Published, pull_request

    seed = (CATALOG_DIR / SEED_FILE).read_bytes()
    sha = sha_of(CATALOG_DIR / SEED_FILE)
    other = seed + b"\n# a mutant\n"
    other_sha = hashlib.sha256(other).hexdigest()
    meta = {"kind": "kforge-kernel", "op": OP, "provider": "catalog", "parent": None, "attempt_id": None,
            "created": "2026-12-03T00:00:00+00:00", "versions": {}}
    kernels = {f"{sha}.py": seed, f"{sha}.json": json.dumps({**meta, "sha256": sha}).encode(),
               f"{other_sha}.py": other, f"{other_sha}.json": json.dumps({**meta, "sha256": other_sha}).encode()}
    github_fake.add_repo("octo/kernels")
    pull_request(GitHub(), "octo/kernels", 7, Published(OP, "report", b"{}", kernels, None))
    (pull,) = github_fake.state["octo/kernels"].pulls
    files = github_fake.state["octo/kernels"].files(pull["head"]["ref"])
    folder = "src/kforge/tables/kernels"
    assert f"{folder}/{sha[:2]}/{sha}.py" not in files
    assert json.loads(files[f"{folder}/{sha[:2]}/{sha}.json"])["catalog"] == SEED_FILE
    assert files[f"{folder}/{other_sha[:2]}/{other_sha}.py"] == other  # not a seed: a copy
    assert "catalog" not in json.loads(files[f"{folder}/{other_sha[:2]}/{other_sha}.json"])
