"""Layers 1 and 3 of DESIGN.md's Trust at load time, with the real Triton backend (CPU tensors in
Triton's interpreter): a stored kernel is served only with a valid verdict of this kforge's
evaluator (the bundled kernels are trusted as shipped), and one that fails the static check is
never imported into the user's process. Each refusal is one warning, the record switched off for
the key, and vendor service."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings

import pytest
import torch

import kforge
from helpers import accept_kernel, make_record, write_user_table
from kforge.backends.triton import TritonBackend, impl_id
from kforge.candidate import load_module
from kforge.catalog import seeds
from kforge.ops import SPECS
from kforge.checks import static as checks
from kforge.device import fingerprint
from kforge.records import Domain
from kforge.router import dispatch
from kforge.router.dispatch import KforgeFallbackWarning
from kforge.store import KernelRejectedError, KernelStore, verdict_key
from kforge.testing import assert_matches_reference

pytestmark = pytest.mark.skipif(
    TritonBackend().available() is not None, reason=f"Triton cannot run here: {TritonBackend().available()}")

OP = "rms_norm"
SPEC = kforge.ops.SPECS[OP]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPE = (4, 64)
# Within the seed's own DOMAIN (the backend refuses a record that claims more).
DOMAIN = Domain(dtypes=("float32,float32",), contiguous=True, dims={"hidden": (1, 65536)})


def plant(source: str, *, verdict: bool) -> str:
    """Store `source` as an rms_norm kernel with a 0.5 us record at SHAPE (a kernel and record
    planted in the user's store and table); with the harness's verdict when `verdict`."""
    sha = KernelStore().put(source, op=OP, provider="user").sha256
    if verdict:
        accept_kernel(sha, OP)
    record = make_record(OP, SHAPE, impl=impl_id(sha), p50=0.5, domain=DOMAIN, device=str(fingerprint(DEVICE)))
    write_user_table(dataclasses.replace(record, source_sha256=sha, provider="user"))
    dispatch.reset()
    return sha


def served_by(times: int = 3) -> dict:
    """Call rms_norm `times` at SHAPE, checking each output; what served them."""
    for seed in range(times):
        args = SPEC.make_inputs(SHAPE, torch.float32, DEVICE, seed)
        assert_matches_reference(SPEC, args, kforge.ops.rms_norm(*args))
    return kforge.stats()["ops"][OP]["by_impl"]


def refused_once(match: str) -> None:
    """The first call warns once (matching `match`) and vendor serves; later calls are silent."""
    with pytest.warns(KforgeFallbackWarning, match=match) as caught:
        assert served_by(1) == {"vendor": 1}
    assert len([w for w in caught if issubclass(w.category, KforgeFallbackWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert served_by(2) == {"vendor": 3}


SEED = seeds(SPECS[OP])[0].read_text()


def test_a_kernel_with_a_verdict_is_served():
    sha = plant(SEED, verdict=True)
    assert served_by(2) == {impl_id(sha): 2}


def test_a_planted_kernel_without_a_verdict_is_not_served():
    sha = plant(SEED, verdict=False)
    refused_once(f"{sha}: it has no verdict from this kforge's evaluator")


def test_a_forged_verdict_is_not_served():
    sha = plant(SEED, verdict=False)
    verdict_key(create=True)
    path = KernelStore().verdict_path(sha)
    body = {"kind": "kforge-verdict", "sha256": sha, "op": OP, "devices": {str(fingerprint(DEVICE)): {}},
            "created": "2026-12-01T00:00:00+00:00", "hmac": "0" * 64}
    path.write_text(json.dumps(body))
    refused_once("was not written by this kforge's evaluator")


def test_a_verdict_copied_from_another_home_is_not_served(tmp_path, monkeypatch, kforge_home):
    monkeypatch.setenv("KFORGE_HOME", str(tmp_path / "other-home"))
    sha = KernelStore().put(SEED, op=OP, provider="user").sha256
    accept_kernel(sha, OP)  # valid there, under that home's key
    other = KernelStore().verdict_path(sha).read_bytes()
    monkeypatch.setenv("KFORGE_HOME", str(kforge_home))
    verdict_key(create=True)  # this home has a key of its own
    plant(SEED, verdict=False)
    KernelStore().verdict_path(sha).write_bytes(other)
    refused_once("was not written by this kforge's evaluator")


def test_a_verdict_of_another_kernel_does_not_transfer():
    donor = KernelStore().put(seeds(SPECS["softmax"])[0].read_text(), op="softmax", provider="user").sha256
    accept_kernel(donor, "softmax")
    sha = plant(SEED, verdict=False)
    KernelStore().verdict_path(sha).write_bytes(KernelStore().verdict_path(donor).read_bytes())
    refused_once(f"is for 'softmax' kernel {donor}, not this kernel")


def test_a_verdict_for_another_device_does_not_cover_this_one():
    other = "cuda|NVIDIA H200|sm90|torch2.13|triton3.6"
    sha = plant(SEED, verdict=False)
    accept_kernel(sha, OP, device=other)
    refused_once(f"covers \\['{re.escape(other)}'\\], not")
    accept_kernel(sha, OP)  # accepted here too: both verdicts hold
    store = KernelStore()
    assert store.verdict_problem(sha, OP, other) is None
    assert store.verdict_problem(sha, OP, str(fingerprint(DEVICE))) is None


def test_a_key_others_can_read_proves_nothing():
    sha = plant(SEED, verdict=True)
    os.chmod(kforge.paths.home() / "verdict.key", 0o644)
    refused_once("has no usable")
    assert KernelStore().verdict_problem(sha, OP) is not None


def test_the_key_is_private_and_made_once():
    key = verdict_key(create=True)
    path = kforge.paths.home() / "verdict.key"
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert verdict_key(create=True) == key


def test_a_bundled_kernel_is_trusted_as_shipped(tmp_path, monkeypatch):
    bundled = tmp_path / "bundled"
    sha = KernelStore(bundled / "kernels").put(SEED, op=OP, provider="catalog").sha256
    monkeypatch.setenv("KFORGE_BUNDLED_TABLE", str(bundled))
    record = make_record(OP, SHAPE, impl=impl_id(sha), p50=0.5, domain=DOMAIN, device=str(fingerprint(DEVICE)))
    write_user_table(dataclasses.replace(record, source_sha256=sha, provider="catalog"))
    dispatch.reset()
    assert served_by(1) == {impl_id(sha): 1}


# A kernel that would run its own code in the user's process on import: its top level writes a
# marker file. It passes nothing else (a verdict is planted too, so only the static check stands).
MARKER_KERNEL = SEED + "\nopen(MARKER, 'w').write('imported')\n"


def test_a_kernel_failing_the_static_check_is_never_imported(tmp_path):
    marker = tmp_path / "imported"
    source = MARKER_KERNEL.replace("MARKER", repr(str(marker)))
    sha = plant(source, verdict=True)
    refused_once("fails the static check")
    assert not marker.exists()
    with pytest.raises(KernelRejectedError, match="fails the static check"):
        KernelStore().load(sha, SPEC)
    assert not marker.exists()
    # The control: imported as it is, the file does write the marker.
    load_module(KernelStore().source_path(sha), "kforge_test_marker_kernel", source=source.encode())
    assert marker.read_text() == "imported"


def test_the_load_time_check_runs_once_per_kernel(monkeypatch):
    calls = []
    real = checks.check_source
    monkeypatch.setattr(checks, "check_source", lambda *a: calls.append(1) or real(*a))
    source = SEED + "\n# once\n"
    sha = KernelStore().put(source, op=OP, provider="user").sha256
    for _ in range(3):
        KernelStore().load(sha, SPEC)
    assert checks.check_stored(sha, source, SPEC) == () and len(calls) == 1


def test_the_loader_runs_the_text_that_was_checked_not_a_re_decoding(tmp_path):
    """compile() of bytes honours a coding declaration; the loader compiles the UTF-8 text."""
    marker = tmp_path / "decoded"
    source = f"# coding: utf_7\ndef forward(x):\n    return x\n# +AAo-open({str(marker)!r}, 'w')\n".encode()
    path = tmp_path / "cookie.py"
    path.write_bytes(source)
    exec(compile(source, str(path), "exec"), {})  # the control: decoded as UTF-7, the comment runs
    assert marker.exists()
    marker.unlink()
    load_module(path, "kforge_test_coding_cookie", source=source)
    assert not marker.exists()
