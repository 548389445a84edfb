"""The native call key (`kforge.router.native`, issue 18) against the Python key it replaces on the
hot path: the same calls share a cache entry under both, and the router chooses the same
implementation through either as a fresh decision from the table would (the full path), for random
signatures of every built-in op: shapes, dtypes, strides, address offsets, requires_grad, scalars."""
from __future__ import annotations

import random
import shutil
import subprocess
import sys

import pytest
import torch

import kforge
from helpers import make_record, write_user_table
from kforge.errors import KforgeInputError
from kforge.records import Domain, Evidence
from kforge.router import calls, dispatch, native

SPECS = kforge.ops.SPECS
NATIVE = native.load()
needs_native = pytest.mark.skipif(NATIVE is None, reason=f"native key: {native.why_not()}")


def test_the_native_key_is_built_where_a_compiler_is():
    # scripts/setup.sh builds it; a machine with g++ that runs the suite without it is a broken set-up.
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("no C++ compiler here")
    assert NATIVE is not None, native.why_not()


def variants(spec, rng: random.Random) -> tuple:
    """A random valid call of `spec` on the CPU, then one property changed at random."""
    shape = tuple(rng.choice(spec_shapes(spec)))
    dtype = rng.choice([torch.float32, torch.bfloat16])
    args = list(spec.make_inputs(shape, dtype, "cpu", rng.randrange(4)))
    i = rng.choice(spec.tensor_args)
    t = args[i]
    change = rng.choice(["none", "offset", "stride", "grad", "dtype", "scalar", "clone"])
    if change == "offset" and t.numel() > 1 and t.is_floating_point():
        flat = torch.empty(t.numel() + 1, dtype=t.dtype)[1:]  # same values, address moved by one element
        args[i] = flat.view(t.shape).copy_(t)
    elif change == "stride" and t.dim() >= 2:
        args[i] = t.transpose(-1, -2).contiguous().transpose(-1, -2)  # same shape, not contiguous
    elif change == "grad" and t.is_floating_point():
        args[i] = t.detach().requires_grad_(True)
    elif change == "dtype" and t.is_floating_point():
        args[i] = t.to(torch.float16)
    elif change == "scalar":
        scalars = [j for j in range(len(args)) if j not in spec.tensor_args]
        if scalars:
            j = rng.choice(scalars)
            v = args[j]
            args[j] = (not v if isinstance(v, bool) else v + 1 if isinstance(v, int) else
                       int(v) if isinstance(v, float) and v == int(v) else v * 2 if isinstance(v, float) else v)
    elif change == "clone":
        args[i] = t.clone()
    return tuple(args)


def spec_shapes(spec):
    """Small shapes of the op's own sets (nothing empty: zero elements never reach the table)."""
    return [s for s in (*spec.shape_sets["smoke"], *spec.shape_sets["odd"]) if 0 not in s][:4]


@needs_native
@pytest.mark.parametrize("op", sorted(SPECS))
def test_native_and_python_keys_group_the_same_calls(op):
    spec = SPECS[op]
    rng = random.Random(op)
    python_key = calls.signature_fn(spec)
    kinds = tuple(i in spec.tensor_args for i in range(len(spec.arg_names)))
    made = [variants(spec, rng) for _ in range(40)]
    py = [python_key(a) for a in made]
    nat = [NATIVE.key(a, kinds) for a in made]
    assert all(k is not None for k in nat), "every call of a built-in op on plain CPU tensors has a native key"
    for i in range(len(made)):
        for j in range(i + 1, len(made)):
            assert (py[i] == py[j]) == (nat[i] == nat[j]), (op, i, j, py[i], py[j])


@needs_native
def test_the_native_key_tells_apart_what_the_python_key_does():
    x, w = torch.randn(4, 64), torch.randn(64)
    kinds = (True, True, False)
    key = NATIVE.key
    base = key((x, w, 1e-6), kinds)
    assert key((torch.randn(4, 64), w, 1e-6), kinds) == base  # other values, same signature
    different = [
        (torch.randn(5, 64), w, 1e-6), (x.double(), w, 1e-6), (x.t().contiguous().t(), w, 1e-6),
        (torch.empty(257)[1:].view(4, 64), w, 1e-6), (x.detach().requires_grad_(), w, 1e-6),
        (x, w, 2e-6), (x, w, 1), (x, w, True), (x, w, None), (x.view(4, 8, 8), w, 1e-6),
        (x, torch.nn.Parameter(w), 1e-6),
    ]
    keys = [key(a, kinds) for a in different]
    assert base not in keys and len(set(keys)) == len(keys)
    assert key((x, w, 1), kinds) != key((x, w, True), kinds)  # 1 == True, but a bool never reuses an int's decision


@needs_native
def test_calls_the_native_key_does_not_describe_take_the_python_key():
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, w = torch.randn(4, 64), torch.randn(64)
    kinds = (True, True, False)
    with FakeTensorMode():
        fake = torch.empty(4, 64)
    for args in [(fake, w, 1e-6), (x.to_sparse(), w, 1e-6), (x, w, "1e-6"), (x, w, 2 ** 70), (x, w, 1.5j)]:
        assert NATIVE.key(args, kinds) is None
    with pytest.raises(TypeError, match="argument 0 is a list, not a tensor"):
        NATIVE.key(([1.0], w, 1e-6), kinds)
    with pytest.raises(TypeError, match="expected 3 arguments"):
        NATIVE.key((x, w), kinds)


def _routers(monkeypatch):
    """Routers of every op over the process-wide state: with the native key (when built) and with
    the Python key alone."""
    out = {"native": {op: dispatch.OpRouter(dispatch.ROUTER, spec) for op, spec in SPECS.items()}} if NATIVE else {}
    monkeypatch.setattr(native, "load", lambda: None)
    out["python"] = {op: dispatch.OpRouter(dispatch.ROUTER, spec) for op, spec in SPECS.items()}
    return out


def test_routed_calls_choose_what_a_fresh_decision_chooses(fake_triton, monkeypatch):
    """Records with domains (contiguous, aligned, rows) at the ops' public shapes; random calls in a
    random order through each key; every call is served by what the full path decides for it."""
    records = []
    for op, spec in SPECS.items():
        for shape in spec_shapes(spec):
            problem = tuple(spec.problem(spec.make_inputs(shape, torch.float32, "cpu", 0)))
            evidence = Evidence(dtypes=(make_record(op).key.dtypes,), shapes=(problem,), seeds=(0,), max_error_ratio=0.5)
            records += [make_record(op, problem, impl="triton:test-ok-aligned", p50=0.01, evidence=evidence,
                                    domain=Domain(contiguous=True, align=16)),
                        make_record(op, problem, impl="triton:test-ok-any", p50=0.5, evidence=evidence)]
    write_user_table(*records)
    rng = random.Random(18)
    for label, routers in _routers(monkeypatch).items():
        for _ in range(300):
            op = rng.choice(sorted(SPECS))
            args = variants(SPECS[op], rng)
            route = routers[op]
            try:
                SPECS[op].check(args)
                if SPECS[op].check_values is not None:
                    SPECS[op].check_values(args)
            except KforgeInputError as exc:  # an invalid call (a changed dtype): refused alike, before any cache
                with pytest.raises(KforgeInputError, match=str(exc)[:40].replace("(", ".").replace(")", ".")):
                    route(args)
                continue
            fresh = dispatch.OpRouter(dispatch.ROUTER, SPECS[op]).make_decision(args)
            with torch.no_grad():
                route(args)
            cached = route.decisions[route.signature(args)]
            assert cached.impl == fresh.impl and cached.kind == fresh.kind, (label, op, cached.impl, fresh.impl)
        assert len({d.impl for r in routers.values() for d in r.decisions.values()}) >= 3  # vendor, both records


def test_a_build_without_a_compiler_says_so_and_kforge_keeps_working(monkeypatch, tmp_path):
    monkeypatch.setenv("KFORGE_NATIVE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    done = subprocess.run([sys.executable, "-m", "kforge.router.native", "build"], capture_output=True, text=True,
                          )
    assert done.returncode == 1
    assert "not built" in done.stderr and "no-such-compiler" in done.stderr
    assert not list(tmp_path.rglob("*.so"))
    probe = "import kforge, torch; from kforge.router import native; print(native.why_not()); " \
            "print(float(kforge.ops.softmax(torch.zeros(1, 2))[0, 0]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "not built" in done.stdout and done.stdout.strip().endswith("0.5")


def test_a_changed_source_is_never_served_by_an_old_build(monkeypatch, tmp_path):
    source = tmp_path / "fastkey.cpp"
    source.write_text(native.SOURCE.read_text() + "\n// changed\n")
    before = native.tag()
    monkeypatch.setattr(native, "SOURCE", source)
    assert native.tag() != before
    monkeypatch.setattr(native, "_loaded", None)
    monkeypatch.setattr(native, "_why_not", None)
    assert native.load() is None and "not built" in native.why_not()
    monkeypatch.setenv(native.DISABLE_ENV, "0")
    monkeypatch.setattr(native, "_why_not", None)
    assert native.load() is None and "switched off" in native.why_not()


def test_doctor_says_which_key_serves(monkeypatch):
    env = {**__import__("os").environ, native.DISABLE_ENV: "0"}
    done = subprocess.run([sys.executable, "-m", "kforge", "doctor"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "WARNING: Python key: the native one is switched off (KFORGE_NATIVE=0)" in done.stdout
    if NATIVE is not None:
        env.pop(native.DISABLE_ENV)
        done = subprocess.run([sys.executable, "-m", "kforge", "doctor", "--json"], capture_output=True, text=True, env=env)
        import json

        report = json.loads(done.stdout)["native_key"]
        assert report["loaded"] and report["path"] == NATIVE.__file__ and report["why_not"] is None


def test_misses_pay_for_the_quiet_count_only_while_an_uncounted_block_is_open():
    import threading

    from kforge.router import misses

    x = torch.randn(3, 8)
    kforge.ops.softmax(x)  # a miss: its decision is made outside any block
    route = dispatch.ROUTER.ops["softmax"]
    d = route.decisions[route.signature((x,))]
    assert d.fn is d.plain  # no check of the block on the miss path
    inside, outside = threading.Event(), threading.Event()

    def other_thread():  # calls outside any block of its own while the main thread is in one
        inside.wait()
        for _ in range(3):
            kforge.ops.softmax(x)
        outside.set()

    t = threading.Thread(target=other_thread)
    t.start()
    with misses.uncounted():
        assert d.fn is d.checked
        for _ in range(2):
            kforge.ops.softmax(x)
        inside.set()
        outside.wait()
    t.join()
    assert d.fn is d.plain
    kforge.ops.softmax(x)
    assert (d.calls, d.quiet, d.counted) == (7, 2, 5)  # the other thread's 3 and the 2 outside are logged


@needs_native
def test_the_native_lookup_is_the_key_and_a_dict_lookup():
    x, w = torch.randn(4, 64), torch.randn(64)
    kinds = (True, True, False)
    decisions = {NATIVE.key((x, w, 1e-6), kinds): "decision"}
    assert NATIVE.lookup((torch.randn(4, 64), w, 1e-6), kinds, decisions) == "decision"
    assert NATIVE.lookup((x, w, 2e-6), kinds, decisions) is None  # another key
    assert NATIVE.lookup((x, w, "1e-6"), kinds, decisions) is None  # a call the key does not describe
    with pytest.raises(TypeError, match="argument 1 is a float, not a tensor"):
        NATIVE.lookup((x, 1.0, 1e-6), kinds, decisions)
    with pytest.raises(TypeError, match="decisions: dict"):
        NATIVE.lookup((x, w, 1e-6), kinds, list(decisions))


@needs_native
def test_keys_past_the_native_buffer_are_left_to_the_python_key():
    # 128 words: a call whose tensors have more dims than fit is one the native key does not describe.
    deep = torch.zeros((1,) * 60 + (2,))
    kinds = (True, True, False)
    assert NATIVE.key((deep, deep, 1e-6), kinds) is None
    assert NATIVE.key((deep, torch.zeros(2), 1e-6), kinds) is not None  # 65 + 5 + 2 words fit
    out = kforge.ops.softmax(deep)  # routed through the Python key where the native one declines
    torch.testing.assert_close(out, torch.softmax(deep, -1))


@pytest.mark.parametrize("make, kind", [
    (lambda t: t.to_sparse(), "sparse_coo"), (lambda t: t.to_sparse_csr(), "sparse_csr"),
    (lambda t: torch.nested.nested_tensor([t[0], t[1]]), "nested"),
])
@pytest.mark.parametrize("position", [0, 1])
def test_a_tensor_that_is_not_dense_is_refused_by_name(make, kind, position):
    x, w = torch.randn(4, 64), torch.randn(64)
    if position == 1 and kind != "sparse_coo":
        pytest.skip("a 1-d weight has no CSR or nested form")
    args = [x, w, 1e-6]
    args[position] = make(args[position])
    name = ("x", "weight")[position]
    with pytest.raises(KforgeInputError, match=f"kforge.rms_norm: argument '{name}' is a {kind} tensor"):
        kforge.ops.rms_norm(*args)
    with pytest.raises(KforgeInputError, match=f"argument '{name}' is a {kind} tensor"):
        dispatch.ROUTER.ops["rms_norm"].route(tuple(args))
