"""Routing behaviour on a CPU: domains, evidence, ranking, nearest shapes, pins, the miss log,
call-time failures, bad input against the decision cache, and many threads on a cold cache.

Non-vendor implementations come from `helpers.FakeTritonBackend` (the `fake_triton` fixture):
"triton:test-ok*" is the reference, "triton:test-wrong*" is visibly wrong, "triton:test-raise*"
raises at call time. A record that must never be chosen is a test-wrong one, so choosing it would
show in the values as well as in the backend's call counts.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest
import torch

import kforge
from helpers import cpu_device, make_record, write_user_table
from kforge.errors import KforgeError, KforgeInputError, KforgePinError, UnknownNameError
from kforge.records import Domain, Evidence
from kforge.router import dispatch, misses
from kforge.router.dispatch import KforgeFallbackWarning
from kforge.testing import assert_matches_reference, compare

SPECS = kforge.ops.SPECS
ENTRIES = kforge.ops.ENTRIES
RMS = SPECS["rms_norm"]
F32 = torch.float32


def rms_args(shape=(8, 64), dtype=F32, seed=0):
    return RMS.make_inputs(shape, dtype, "cpu", seed)


def stats(op: str = "rms_norm") -> dict:
    return kforge.stats()["ops"].get(op, {})


def assert_correct(op: str, args, times: int = 1):
    """Call `op` `times` and check every output against the reference; returns the last."""
    for _ in range(times):
        out = ENTRIES[op](*args)
        assert_matches_reference(SPECS[op], args, out)
    return out


def assert_wrong(op: str, args):
    out = ENTRIES[op](*args)
    assert not compare(SPECS[op], args, out).ok, "expected the test-wrong implementation to serve this call"


def sliced(shape, dtype=F32):
    """A non-contiguous tensor of `shape` (rows strided by shape[-1] + 16), aligned like its base."""
    base = torch.randn(*shape[:-1], shape[-1] + 16).to(dtype)
    return base[..., : shape[-1]]


def offset(shape, dtype=F32, elements: int = 1):
    """A contiguous tensor of `shape` starting `elements` past a 16-byte aligned address."""
    n = math.prod(shape)
    storage = torch.randn(n + elements).to(dtype)
    return storage[elements:].view(shape)


# -- domains and evidence ------------------------------------------------------------------------
DOMAIN_CASES = {
    # facet: (domain of the test-wrong record at (8, 64), args outside it, args inside it)
    "dtypes": (Domain(dtypes=("bfloat16,bfloat16",)), lambda: rms_args(), None),
    "contiguous": (Domain(contiguous=True), lambda: (sliced((8, 64)), torch.randn(64), 1e-6), lambda: rms_args()),
    "align": (Domain(align=16), lambda: (offset((8, 64)), torch.randn(64), 1e-6), lambda: rms_args()),
    "align-weight": (Domain(align=8), lambda: (torch.randn(8, 64), offset((64,)), 1e-6),
                     lambda: (torch.randn(8, 64), offset((64,), elements=2), 1e-6)),
    # rows=16 is served by the nearest measured shape (8, 64), whose kernel was verified up to
    # 64 rows (EVIDENCE) but declares a domain of at most 8
    "dims": (Domain(dims={"rows": (1, 8)}), lambda: rms_args((16, 64)), lambda: rms_args((5, 64))),
}
EVIDENCE = Evidence(dtypes=("float32,float32",), shapes=((8, 64), (64, 64)), seeds=(0,), max_error_ratio=0.5)


@pytest.mark.parametrize("facet", sorted(DOMAIN_CASES))
def test_record_outside_its_verified_domain_is_never_chosen(fake_triton, facet):
    domain, outside, inside = DOMAIN_CASES[facet]
    write_user_table(make_record(problem=(8, 64), impl="triton:test-wrong", p50=0.01, domain=domain,
                                 evidence=EVIDENCE))
    assert_correct("rms_norm", outside(), times=3)
    assert fake_triton.calls["triton:test-wrong"] == 0
    row = stats()
    assert (row["fallback"], row["hit"], row["by_impl"]) == (3, 0, {"vendor": 3})

    if inside is not None:  # the same record does serve inside its domain
        assert_wrong("rms_norm", inside())
        assert fake_triton.calls["triton:test-wrong"] == 1


@pytest.mark.parametrize("evidence, chosen", [
    (Evidence(dtypes=("bfloat16,bfloat16",), shapes=((8, 64),), seeds=(0,), max_error_ratio=0.5), False),
    (Evidence(dtypes=("float32,float32",), shapes=((8, 128),), seeds=(0,), max_error_ratio=0.5), False),
    (Evidence(dtypes=("float32,float32",), shapes=((8, 64, 1),), seeds=(0,), max_error_ratio=0.5), False),
    # verified at fewer rows than the call's: never served beyond what was verified
    (Evidence(dtypes=("float32,float32",), shapes=((2, 64),), seeds=(0,), max_error_ratio=0.5), False),
    (Evidence(dtypes=("float32,float32",), shapes=((2, 64), (32, 64)), seeds=(0,), max_error_ratio=0.5), True),
], ids=["other-dtype", "other-hidden", "other-rank", "same-hidden-fewer-rows", "same-hidden-more-rows"])
def test_record_whose_evidence_does_not_cover_the_call_is_never_chosen(fake_triton, evidence, chosen):
    impl = "triton:test-ok" if chosen else "triton:test-wrong"
    write_user_table(make_record(problem=(8, 64), impl=impl, p50=0.01, evidence=evidence))
    assert_correct("rms_norm", rms_args(), times=2)
    assert fake_triton.calls[impl] == (2 if chosen else 0)
    assert stats()["fallback" if not chosen else "hit"] == 2


def test_records_of_a_backend_this_kforge_lacks_are_skipped(monkeypatch):
    # A table written by a kforge with a backend this one lacks (here: triton removed).
    monkeypatch.delitem(kforge.backends.BACKENDS, kforge.backends.BackendName.TRITON, raising=False)
    write_user_table(make_record(problem=(8, 64), impl="triton:test-wrong", p50=0.01))
    assert_correct("rms_norm", rms_args(), times=2)
    assert stats()["fallback"] == 2


def test_an_implementation_that_fails_to_load_is_skipped_with_a_warning(fake_triton):
    write_user_table(make_record(impl="triton:test-unloadable", p50=0.01),
                     make_record(impl="triton:test-ok", p50=1.0))
    with pytest.warns(KforgeFallbackWarning, match="test-unloadable"):
        assert_correct("rms_norm", rms_args(), times=3)
    assert fake_triton.calls == {"triton:test-ok": 3}


# -- ranking -------------------------------------------------------------------------------------
def test_fastest_eligible_record_by_end_to_end_score(fake_triton):
    write_user_table(
        make_record(impl="triton:test-ok-a", p50=5.0, host=1.0),  # lowest host time; score 5
        make_record(impl="triton:test-ok-b", p50=2.0, host=8.0),  # lowest device time; score 8
        make_record(impl="triton:test-ok-c", p50=3.0, host=3.0),  # score 3: the fastest end to end
        make_record(impl="triton:test-wrong", p50=0.1, host=0.1, domain=Domain(dims={"rows": (1, 4)})),
        make_record(impl="vendor", p50=4.0, host=3.5),
    )
    assert_correct("rms_norm", rms_args(), times=2)
    assert fake_triton.calls == {"triton:test-ok-c": 2}
    assert stats()["by_impl"] == {"triton:test-ok-c": 2} and stats()["hit"] == 2

    # a faster record that only takes contiguous inputs: it serves those, the next one the others
    write_user_table(make_record(impl="triton:test-ok-d", p50=0.2, domain=Domain(contiguous=True)))
    assert_correct("rms_norm", rms_args())
    assert_correct("rms_norm", (sliced((8, 64)), torch.randn(64), 1e-6))
    assert fake_triton.calls == {"triton:test-ok-c": 3, "triton:test-ok-d": 1}

    # vendor, a measured candidate like any other, wins when it is fastest, and counts as a hit
    write_user_table(make_record(impl="vendor", p50=0.15, host=0.15))
    assert_correct("rms_norm", rms_args(), times=2)
    assert fake_triton.calls == {"triton:test-ok-c": 3, "triton:test-ok-d": 1}
    assert stats()["by_impl"]["vendor"] == 2 and stats()["hit"] == 6


def test_nearest_shape_serves_unseen_rows_within_four_times(fake_triton):
    # verified up to 256 rows, so only the 4x band limits it here (tests/test_trust_rows.py: the
    # evidence's own limit)
    write_user_table(make_record(problem=(16, 64), impl="triton:test-ok", evidence=Evidence(
        dtypes=("float32,float32",), shapes=((16, 64), (256, 64)), seeds=(0,), max_error_ratio=0.5)))
    for shape in ((5, 64), (64, 64), (4, 4, 64), (16, 64)):  # 16/5, 64/16, exact
        assert_correct("rms_norm", rms_args(shape))
    assert fake_triton.calls["triton:test-ok"] == 4
    for shape in ((65, 64), (3, 64), (16, 128), (16, 63)):  # beyond 4x, or another hidden
        assert_correct("rms_norm", rms_args(shape))
    assert_correct("rms_norm", rms_args((16, 64), dtype=torch.bfloat16))  # another dtype signature
    assert fake_triton.calls["triton:test-ok"] == 4
    assert (stats()["hit"], stats()["miss"]) == (4, 5)


# -- pins ----------------------------------------------------------------------------------------
def test_pinned_implementation_is_used_or_raises(fake_triton):
    write_user_table(make_record(problem=(8, 64), impl="triton:test-ok-fast", p50=1.0),
                     make_record(problem=(8, 64), impl="triton:test-ok-slow", p50=9.0, domain=Domain(align=16)))
    with kforge.use("rms_norm", "triton:test-ok-slow"):
        assert_correct("rms_norm", rms_args(), times=2)  # forced, although slower
        assert_correct("rms_norm", rms_args((5, 64)))  # nearest shape, inside its domain and evidence
        assert_correct("softmax", SPECS["softmax"].make_inputs((8, 64), F32, "cpu", 0))  # other ops unpinned
        with pytest.raises(KforgePinError, match="domain") as err:
            kforge.ops.rms_norm(offset((8, 64)), torch.randn(64), 1e-6)
        assert (err.value.op, err.value.impl) == ("rms_norm", "triton:test-ok-slow")
        with pytest.raises(KforgePinError, match="no record"):
            kforge.ops.rms_norm(*rms_args((8, 128)))
    assert fake_triton.calls == {"triton:test-ok-slow": 3}
    assert stats()["pinned"] == 3

    assert_correct("rms_norm", rms_args())  # unpinned again: the fastest
    assert fake_triton.calls["triton:test-ok-fast"] == 1

    with kforge.use("rms_norm", "triton:test-missing"):
        with pytest.raises(KforgePinError):
            kforge.ops.rms_norm(*rms_args())
    with kforge.use("rms_norm", "triton:test-ok-fast"):
        x, w, eps = rms_args()
        with pytest.raises(KforgePinError, match="grad"):  # it has no backward: never a silent vendor
            kforge.ops.rms_norm(x, w.requires_grad_(), eps)


def test_pinned_vendor_overrides_the_table(fake_triton):
    write_user_table(make_record(problem=(8, 64), impl="triton:test-wrong", p50=0.01))
    with kforge.use("rms_norm", "vendor"):
        assert_correct("rms_norm", rms_args(), times=3)
        assert_correct("rms_norm", rms_args((0, 64)))
    assert fake_triton.calls["triton:test-wrong"] == 0
    assert stats()["by_impl"] == {"vendor": 4} and stats()["pinned"] == 4
    assert_wrong("rms_norm", rms_args())  # and the pin really was what kept it out


def test_pin_is_scoped_to_its_thread(fake_triton):
    write_user_table(make_record(problem=(8, 64), impl="triton:test-ok", p50=0.01))
    seen = []
    with kforge.use("rms_norm", "triton:test-missing"):
        worker = threading.Thread(target=lambda: seen.append(kforge.ops.rms_norm(*rms_args())))
        worker.start()
        worker.join()
        with pytest.raises(KforgePinError):
            kforge.ops.rms_norm(*rms_args())
    assert len(seen) == 1 and fake_triton.calls == {"triton:test-ok": 1}


def test_pinned_implementation_failing_at_call_time_is_not_silently_replaced(fake_triton):
    write_user_table(make_record(problem=(8, 64), impl="triton:test-raise", p50=0.01))
    with kforge.use("rms_norm", "triton:test-raise"):
        with pytest.raises(RuntimeError):
            kforge.ops.rms_norm(*rms_args())


@pytest.mark.parametrize("pin, outcome", [
    ("rms_norm=triton:test-missing", KforgePinError),
    ("softmax=vendor, rms_norm=vendor", "vendor"),
    ("rms_norm=triton:test-ok", "triton:test-ok"),
])
def test_pin_from_the_environment(fake_triton, monkeypatch, pin, outcome):
    write_user_table(make_record(problem=(8, 64), impl="triton:test-wrong", p50=0.01),
                     make_record(problem=(8, 64), impl="triton:test-ok", p50=1.0))
    monkeypatch.setenv("KFORGE_PIN", pin)
    dispatch.reset()
    for _ in range(3):
        if outcome is KforgePinError:
            with pytest.raises(KforgePinError):
                kforge.ops.rms_norm(*rms_args())
        else:
            assert_correct("rms_norm", rms_args())
    assert fake_triton.calls["triton:test-wrong"] == 0
    if outcome is not KforgePinError:
        assert stats()["by_impl"] == {outcome: 3} and stats()["pinned"] == 3


def test_invalid_pins_are_refused():
    with pytest.raises(UnknownNameError, match="rms_norm"):
        with kforge.use("rms_normm", "vendor"):
            pass
    with pytest.raises(KforgeError):
        with kforge.use("rms_norm", "not an implementation"):
            pass


def test_invalid_pin_in_the_environment_fails_every_call(monkeypatch):
    """A mistyped KFORGE_PIN must not pin on some calls and be ignored on others."""
    monkeypatch.setenv("KFORGE_PIN", "rms_norm")
    dispatch.reset()
    for _ in range(3):
        with pytest.raises(KforgeError, match="KFORGE_PIN"):
            kforge.ops.rms_norm(*rms_args())


# -- miss log ------------------------------------------------------------------------------------
def logged(op: str, problem) -> dict:
    hits = [e for e in misses.read_all() if e["op"] == op and tuple(e["shape"]) == tuple(problem)]
    assert len(hits) <= 1
    return hits[0] if hits else {"misses": 0, "fallbacks": 0}


def test_misses_and_fallbacks_are_counted_and_flushed(fake_triton):
    write_user_table(make_record(problem=(8, 64), impl="triton:test-ok"),
                     make_record(problem=(2, 32), impl="triton:test-wrong", domain=Domain(contiguous=True)))
    softmax_args = SPECS["softmax"].make_inputs((4, 64), F32, "cpu", 0)
    for _ in range(3):
        assert_correct("rms_norm", rms_args((4, 128)))
    for _ in range(2):
        assert_correct("rms_norm", rms_args((2, 3, 128)))  # same key (6, 128), another signature
        assert_correct("rms_norm", rms_args((8, 64)))  # a hit: not logged
        assert_correct("rms_norm", (sliced((2, 32)), torch.randn(32), 1e-6))  # a fallback
        assert_correct("rms_norm", rms_args((0, 64)))  # empty: nothing to compute, not logged
    assert_correct("softmax", softmax_args, times=4)
    row = stats()
    assert (row["miss"], row["hit"], row["fallback"], row["empty"]) == (5, 2, 2, 2)
    assert stats("softmax")["miss"] == 4

    kforge.flush()
    assert logged("rms_norm", (4, 128))["misses"] == 3
    assert logged("rms_norm", (6, 128))["misses"] == 2
    assert logged("rms_norm", (2, 32)) | {"first_seen": 0, "last_seen": 0} == {
        "op": "rms_norm", "dtypes": "float32,float32", "shape": [2, 32], "misses": 0, "fallbacks": 2,
        "device": cpu_device(), "first_seen": 0, "last_seen": 0,
        "layouts": [{"contiguous": False, "aligned": 16}]}  # contiguous calls would be served: the layout missed
    assert logged("softmax", (4, 64))["misses"] == 4
    assert logged("rms_norm", (8, 64))["misses"] == 0 and logged("rms_norm", (0, 64))["misses"] == 0

    assert_correct("rms_norm", rms_args((4, 128)), times=2)
    kforge.flush()
    kforge.flush()  # nothing new: nothing counted twice
    assert logged("rms_norm", (4, 128))["misses"] == 5
    assert misses.read_all()[0]["shape"] == [4, 128]  # most called first


def test_miss_counts_are_flushed_periodically(monkeypatch):
    monkeypatch.setattr(misses, "FLUSH_INTERVAL_S", 0.0)
    assert_correct("rms_norm", rms_args(), times=3)
    assert logged("rms_norm", (8, 64))["misses"] == 0  # not per call: the hot path never writes
    dispatch.ROUTER.next_check = 0.0
    assert_correct("softmax", SPECS["softmax"].make_inputs((2, 8), F32, "cpu", 0))  # the next periodic check
    # The periodic flush runs on a daemon thread, never on the caller's: wait for it.
    for thread in [t for t in threading.enumerate() if t.name == "kforge-miss-flush"]:
        thread.join(timeout=30)
    assert logged("rms_norm", (8, 64))["misses"] == 3


def test_a_process_that_exits_writes_its_misses(kforge_home):
    script = textwrap.dedent("""
        import kforge
        spec = kforge.ops.SPECS["rms_norm"]
        for _ in range(7):
            kforge.ops.rms_norm(*spec.make_inputs((3, 40), spec.dtypes[2], "cpu", 0))
        kforge.ops.softmax(*kforge.ops.SPECS["softmax"].make_inputs((2, 24), spec.dtypes[2], "cpu", 0))
    """)
    env = {**os.environ, "KFORGE_HOME": str(kforge_home)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)
    assert logged("rms_norm", (3, 40))["misses"] == 7
    assert logged("softmax", (2, 24))["misses"] == 1


# -- failures at call time -----------------------------------------------------------------------
def test_implementation_raising_at_call_time_is_replaced_by_vendor_and_switched_off(fake_triton):
    write_user_table(make_record(problem=(8, 64), impl="triton:test-raise", p50=0.01),
                     make_record(problem=(4, 128), impl="triton:test-raise", p50=0.01))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert_correct("rms_norm", rms_args((8, 64)), times=4)
        assert_correct("rms_norm", rms_args((8, 64), seed=1))  # a new input of the same signature
        assert_correct("rms_norm", (sliced((8, 64)), torch.randn(64), 1e-6))  # same key, another signature
        fallbacks = [w for w in caught if issubclass(w.category, KforgeFallbackWarning)]
        assert len(fallbacks) == 1 and "test-raise" in str(fallbacks[0].message)
        assert fake_triton.calls["triton:test-raise"] == 1
        row = stats()
        assert (row["fallback"], row["hit"], row["by_impl"]) == (6, 0, {"vendor": 6})
        assert len(kforge.stats()["disabled"]) == 1 and "triton:test-raise" in kforge.stats()["disabled"][0]

        # switched off for its key only: another key still tries it (and warns once for it)
        assert_correct("rms_norm", rms_args((4, 128)), times=2)
        assert fake_triton.calls["triton:test-raise"] == 2
        assert len([w for w in caught if issubclass(w.category, KforgeFallbackWarning)]) == 2

    kforge.flush()
    assert logged("rms_norm", (8, 64))["fallbacks"] == 6


def test_after_a_call_time_failure_the_next_candidate_serves(fake_triton):
    write_user_table(make_record(impl="triton:test-raise", p50=0.01), make_record(impl="triton:test-ok", p50=5.0))
    with pytest.warns(KforgeFallbackWarning):
        assert_correct("rms_norm", rms_args(), times=4)
    assert fake_triton.calls == {"triton:test-raise": 1, "triton:test-ok": 3}
    row = stats()
    assert (row["fallback"], row["hit"]) == (1, 3)


def test_inputs_requiring_grad_get_the_differentiable_vendor_path(fake_triton):
    write_user_table(make_record(impl="triton:test-ok", p50=0.01))
    x, w, eps = rms_args()
    w = w.clone().requires_grad_()
    out = kforge.ops.rms_norm(x, w, eps)
    out.sum().backward()
    expected_w = w.detach().clone().requires_grad_()
    RMS.reference(x, expected_w, eps).sum().backward()
    torch.testing.assert_close(w.grad, expected_w.grad)
    assert fake_triton.calls["triton:test-ok"] == 0  # it has no backward
    with torch.no_grad():
        assert_correct("rms_norm", (x, w, eps))
    assert fake_triton.calls["triton:test-ok"] == 1


# -- bad input against the decision cache --------------------------------------------------------
@pytest.mark.parametrize("bad_eps", [-1.0, -1, math.nan, math.inf, True, "1e-6", None])
def test_cached_decision_never_lets_an_invalid_argument_through(bad_eps):
    x, w, _ = rms_args()
    for valid in (1e-6, 1.0, 1, 0.0):  # warm the cache with every valid eps that could compare equal
        kforge.ops.rms_norm(x, w, valid)
    with pytest.raises(KforgeInputError, match="eps") as err:
        kforge.ops.rms_norm(x, w, bad_eps)
    assert (err.value.op, err.value.arg) == ("rms_norm", "eps")
    with kforge.use("rms_norm", "vendor"):  # the pinned path keeps its own cache
        for valid in (1e-6, 1.0, 1, 0.0):
            kforge.ops.rms_norm(x, w, valid)
        with pytest.raises(KforgeInputError, match="eps"):
            kforge.ops.rms_norm(x, w, bad_eps)


def test_cached_decision_never_lets_an_invalid_tensor_through():
    x, w, eps = rms_args()
    kforge.ops.rms_norm(x, w, eps)
    with pytest.raises(KforgeInputError) as err:
        kforge.ops.rms_norm(x, w.to(torch.int32), eps)
    assert err.value.arg == "weight"
    with pytest.raises(KforgeInputError) as err:
        kforge.ops.rms_norm(x, torch.randn(63), eps)
    assert err.value.arg == "weight"
    x3, r3, w3, _ = SPECS["fused_add_rms_norm"].make_inputs((4, 32), F32, "cpu", 0)
    kforge.ops.fused_add_rms_norm(x3, r3, w3, 1e-6)
    with pytest.raises(KforgeInputError) as err:
        kforge.ops.fused_add_rms_norm(x3, r3.to(torch.float64), w3, 1e-6)
    assert err.value.arg == "residual"


# -- many threads, cold cache --------------------------------------------------------------------
def _thread_inputs():
    """(op, args) pairs covering hits, nearest shapes, misses, domain fallbacks, call-time
    failures, odd layouts and empty tensors."""
    sm, fu = SPECS["softmax"], SPECS["fused_add_rms_norm"]
    bf16 = torch.bfloat16
    return [
        ("rms_norm", RMS.make_inputs((4, 64), F32, "cpu", 0)),  # hit test-ok
        ("rms_norm", (sliced((4, 64)), torch.randn(64), 1e-6)),  # hit test-ok, non-contiguous
        ("rms_norm", RMS.make_inputs((3, 17), F32, "cpu", 1)),  # test-wrong out of domain: fallback
        ("rms_norm", RMS.make_inputs((16, 128), F32, "cpu", 2)),  # test-raise, then test-ok
        ("rms_norm", (offset((16, 128)), torch.randn(128), 1e-5)),  # same key, another signature
        ("rms_norm", RMS.make_inputs((2, 4, 128), bf16, "cpu", 3)),  # miss
        ("rms_norm", RMS.make_inputs((0, 64), F32, "cpu", 0)),  # empty
        ("softmax", sm.make_inputs((5, 33), F32, "cpu", 4)),  # hit test-ok
        ("softmax", sm.make_inputs((3, 33), F32, "cpu", 5)),  # nearest shape: test-ok
        ("softmax", sm.make_inputs((2, 64), bf16, "cpu", 6)),  # miss until the table gains it
        ("softmax", (torch.randn(1, 48).expand(6, 48),)),  # expanded: miss
        ("fused_add_rms_norm", fu.make_inputs((4, 64), F32, "cpu", 7)),  # test-raise only: vendor
        ("fused_add_rms_norm", fu.make_inputs((2, 3, 64), bf16, "cpu", 8)),  # miss
    ]


def _same(a, b) -> bool:
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a.shape == b.shape and a.dtype == b.dtype and a.is_contiguous() and torch.equal(a, b)


def test_many_threads_on_a_cold_cache(fake_triton, monkeypatch):
    monkeypatch.setattr(dispatch, "CHECK_INTERVAL_S", 0.0)  # every call also checks the table
    write_user_table(
        make_record("rms_norm", (4, 64), impl="triton:test-ok"),
        make_record("rms_norm", (3, 17), impl="triton:test-wrong", domain=Domain(dims={"rows": (1, 2)})),
        make_record("rms_norm", (16, 128), impl="triton:test-raise", p50=0.5),
        make_record("rms_norm", (16, 128), impl="triton:test-ok", p50=1.0),
        make_record("softmax", (5, 33), impl="triton:test-ok"),
        make_record("fused_add_rms_norm", (4, 64), impl="triton:test-raise"),
    )
    inputs = _thread_inputs()
    allowed = []  # the exact outputs a correct route may return: vendor's or the reference's
    for op, args in inputs:
        spec = SPECS[op]
        outs = [spec.vendor(*args), spec.reference(*args)]  # what vendor and test-ok serve
        outs = [tuple(o.contiguous() for o in out) if isinstance(out, tuple) else out.contiguous() for out in outs]
        assert_matches_reference(spec, args, outs[0])  # the reference is right by definition
        allowed.append(outs)
    late = make_record("softmax", (2, 64), impl="triton:test-ok-late", dtype=torch.bfloat16)

    threads, calls = 16, 1000
    start = threading.Barrier(threads + 1)
    errors, wrong = [], []

    def work(t: int) -> None:
        start.wait()
        try:
            for i in range(calls):
                n = (t * 7 + i * 5) % len(inputs)
                op, args = inputs[n]
                out = ENTRIES[op](*args)
                if not any(_same(out, ok) for ok in allowed[n]):
                    wrong.append((t, i, op, n))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append((t, repr(exc)))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        start.wait()
        write_user_table(late)  # the table changes under the running threads
        for w in workers:
            w.join(60)
    assert not errors, errors[:3]
    assert not wrong, wrong[:5]
    fallbacks = [str(w.message) for w in caught if issubclass(w.category, KforgeFallbackWarning)]
    assert len(fallbacks) == 2, fallbacks  # one per key whose implementation raised
    assert fake_triton.calls["triton:test-wrong"] == 0
    assert fake_triton.calls["triton:test-raise"] >= 2
    assert fake_triton.calls["triton:test-ok-late"] > 0  # the change was picked up mid-run
    assert len(kforge.stats()["disabled"]) == 2
    # Counts are kept without locks on the hot path: a call in flight while its decision is dropped
    # (table change, call-time failure) may be counted twice or not at all, never more than once
    # per thread (see the report on Decision counting in router/dispatch.py).
    total = sum(row["calls"] for row in kforge.stats()["ops"].values())
    assert abs(total - threads * calls) <= threads
