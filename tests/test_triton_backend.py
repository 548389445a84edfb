"""The Triton backend, on the GPU when there is one, else on CPU tensors in Triton's interpreter
(conftest.py sets TRITON_INTERPRET=1 when no GPU is usable): seed kernels' special values and
domains (test_seeds runs every seed over the CPU sets), a stored kernel with a record is routed to, a kernel edited on disk is
refused with vendor service and a warning that says why, and a record is never used outside its
domain or beyond its kernel's DOMAIN."""
from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

import kforge
from helpers import accept_kernel, make_record, write_user_table
from kforge.backends import BACKENDS, BackendName
from kforge.backends.triton import TritonBackend, impl_id
from kforge.catalog import seeds
from kforge.ops import SPECS
from kforge.device import fingerprint
from kforge.records import DispatchKey, Domain, Evidence
from kforge.router import dispatch
from kforge.router.dispatch import KforgeFallbackWarning
from kforge.router.key import dtype_signature
from kforge.store import KernelStore
from kforge.testing import assert_matches_reference

pytestmark = pytest.mark.skipif(
    TritonBackend().available() is not None, reason=f"Triton cannot run here: {TritonBackend().available()}")

SEED_FILES = [(op, path) for op, spec in SPECS.items() for path in seeds(spec)]
SEED_IDS = [path.stem for _, path in SEED_FILES]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
PROBLEM_SHAPES = {"rms_norm": (8, 64), "fused_add_rms_norm": (8, 64), "softmax": (8, 64)}


def store_seed(op: str, path) -> tuple[str, object]:
    """Put a seed file of `op` in the kernel store with the verdict of an accepted kernel;
    returns (sha, candidate)."""
    kernel = KernelStore().put(path.read_text(), op=op, provider="catalog", attempt_id=f"seed:{path.stem}")
    accept_kernel(kernel.sha256, op)
    return kernel.sha256, KernelStore().load(kernel.sha256, kforge.ops.SPECS[op])


def record_for(op: str, sha: str, domain: Domain, problem=None, dtype=torch.float32, **overrides):
    """A record of the stored kernel `sha` for `op` at `problem` on DEVICE, evidence covering it."""
    dtypes = overrides.pop("dtypes", None)
    record = make_record(op, problem or PROBLEM_SHAPES[op], impl=impl_id(sha), dtype=dtype, dtypes=dtypes, p50=0.5,
                         domain=domain, device=str(fingerprint(DEVICE)))
    return dataclasses.replace(record, **{"source_sha256": sha, "provider": "catalog", **overrides})


def call(op: str, args):
    return kforge.ops.ENTRIES[op](*args)


def by_impl(op: str) -> dict:
    return kforge.stats()["ops"].get(op, {}).get("by_impl", {})


# -- seed kernels ----------------------------------------------------------------------------------
# Every seed at the CPU sets and every dtype, through the router: tests/test_seeds.py.
@pytest.mark.parametrize("op", ["rms_norm", "fused_add_rms_norm"])
def test_norm_seeds_take_a_weight_of_another_float_dtype(op):
    """Their DOMAIN claims every (x, weight) pair of half and single precision."""
    spec = kforge.ops.SPECS[op]
    _, candidate = store_seed(op, seeds(SPECS[op])[0])
    for x_dtype, w_dtype in ((torch.bfloat16, torch.float32), (torch.float16, torch.bfloat16), (torch.float32, torch.float16)):
        args = spec.make_inputs((3, 1000), x_dtype, DEVICE, 0)
        args = args[:-2] + (args[-2].to(w_dtype), args[-1])
        assert_matches_reference(spec, args, candidate.forward(*args))


def test_softmax_seeds_keep_the_references_special_values():
    spec = kforge.ops.SPECS["softmax"]
    x = torch.randn(6, 300, device=DEVICE)
    x[0, 3] = float("nan")  # NaN reaches the whole row
    x[1, :] = float("-inf")  # all -inf: NaN, as exp(-inf - -inf)
    x[2, 7] = float("inf")
    x[3, 100:] = float("-inf")  # a masked tail: finite, exact zeros
    for path in seeds(SPECS["softmax"]):
        _, candidate = store_seed("softmax", path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # numpy, inside the interpreter
            assert_matches_reference(spec, (x,), candidate.forward(x))


def test_softmax_online_loops_over_column_blocks():
    """Rows longer than one block (MAX_BLOCK columns) go through both loops more than once."""
    spec = kforge.ops.SPECS["softmax"]
    path = next(p for p in seeds(SPECS["softmax"]) if p.stem == "softmax_online")
    _, candidate = store_seed("softmax", path)
    cols = 2 * candidate.module.MAX_BLOCK + 17
    for dtype in DTYPES:
        args = spec.make_inputs((3, cols), dtype, DEVICE, 0)
        assert_matches_reference(spec, args, candidate.forward(*args))


def test_seeds_declare_a_domain_the_router_can_use():
    for op, path in SEED_FILES:
        _, candidate = store_seed(op, path)
        domain = candidate.domain
        assert domain.contiguous and domain.align == 1 and domain.dtypes, path.name
        assert set(domain.dims) <= set(kforge.ops.SPECS[op].problem_dims), path.name
        assert all(len(s.split(",")) == len(kforge.ops.SPECS[op].tensor_args) for s in domain.dtypes)
        if any("float64" in s for s in domain.dtypes):
            # fp32 accumulation cannot serve fp64: a seed that claims it must compute in fp64, and
            # is held to the fp64 budget (the oracle is the fp64 reference itself).
            spec = kforge.ops.SPECS[op]
            args = spec.make_inputs(PROBLEM_SHAPES.get(op, spec.shapes("smoke")[0]), torch.float64, DEVICE, 0)
            assert_matches_reference(spec, args, candidate.forward(*args))


# -- routing to stored kernels --------------------------------------------------------------------
@pytest.mark.parametrize("op, path", SEED_FILES, ids=SEED_IDS)
def test_a_stored_kernel_with_a_record_is_routed_to(op, path):
    spec = kforge.ops.SPECS[op]
    sha, candidate = store_seed(op, path)
    shape = PROBLEM_SHAPES.get(op, spec.shapes("smoke")[0])
    probe = spec.make_inputs(shape, torch.float32, DEVICE, 0)  # the key is the op's problem, not the shape
    write_user_table(record_for(op, sha, candidate.domain, problem=spec.problem(probe),
                                dtypes=dtype_signature(probe, spec.tensor_args)))
    for seed in (0, 1):
        args = spec.make_inputs(shape, torch.float32, DEVICE, seed)
        assert_matches_reference(spec, args, call(op, args))
    assert by_impl(op) == {impl_id(sha): 2}
    assert kforge.stats()["ops"][op]["hit"] == 2


def test_a_kernel_edited_on_disk_is_refused_and_vendor_serves(recwarn):
    op, path = "rms_norm", seeds(SPECS["rms_norm"])[0]
    spec = kforge.ops.SPECS[op]
    sha, candidate = store_seed(op, path)
    write_user_table(record_for(op, sha, candidate.domain))
    args = spec.make_inputs(PROBLEM_SHAPES[op], torch.float32, DEVICE, 0)
    assert_matches_reference(spec, args, call(op, args))
    assert by_impl(op) == {impl_id(sha): 1}

    stored = KernelStore().source_path(sha)
    stored.write_text(stored.read_text().replace("y = x * rstd * w", "y = x * rstd * w + 1.0"))
    dispatch.reset()
    with pytest.warns(KforgeFallbackWarning) as caught:
        out = call(op, args)
    assert_matches_reference(spec, args, out)
    message = " ".join(str(w.message) for w in caught)
    assert "edited on disk" in message and sha in message and str(stored) in message and impl_id(sha) in message
    assert by_impl(op) == {"vendor": 1}
    assert kforge.stats()["ops"][op]["fallback"] == 1
    assert kforge.stats()["disabled"] == [f"{impl_id(sha)} for {record_for(op, sha, candidate.domain).key}"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning only: the record stays switched off
        assert_matches_reference(spec, args, call(op, args))


def test_a_record_whose_domain_excludes_the_call_is_not_chosen():
    op, path = "rms_norm", seeds(SPECS["rms_norm"])[0]
    spec = kforge.ops.SPECS[op]
    sha, candidate = store_seed(op, path)
    write_user_table(record_for(op, sha, candidate.domain))
    base = torch.randn(8, 64 + 16, device=DEVICE)
    x = base[:, :64]  # (8, 64), rows strided by 80: not contiguous
    args = (x, torch.randn(64, device=DEVICE), 1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = call(op, args)
    assert_matches_reference(spec, args, out)
    assert by_impl(op) == {"vendor": 1} and kforge.stats()["ops"][op]["fallback"] == 1
    contiguous = (x.contiguous(),) + args[1:]
    assert_matches_reference(spec, contiguous, call(op, contiguous))
    assert by_impl(op) == {"vendor": 1, impl_id(sha): 1}


@pytest.mark.parametrize("problem, chosen", [((8, 64), True), ((2, 65536), True), ((1, 65537), False)])
def test_the_kernels_dims_limit_is_honoured(problem, chosen):
    """A record is used up to its DOMAIN's hidden limit and not past it (its evidence covers each
    shape here, so only the domain decides)."""
    op, path = "rms_norm", seeds(SPECS["rms_norm"])[0]
    spec = kforge.ops.SPECS[op]
    sha, candidate = store_seed(op, path)
    write_user_table(record_for(op, sha, candidate.domain, problem=problem))
    args = spec.make_inputs(problem, torch.float32, DEVICE, 0)
    assert_matches_reference(spec, args, call(op, args))
    assert by_impl(op) == ({impl_id(sha): 1} if chosen else {"vendor": 1})


def test_a_record_claiming_more_than_its_kernels_domain_is_refused_at_load():
    op, path = "rms_norm", seeds(SPECS["rms_norm"])[0]
    spec = kforge.ops.SPECS[op]
    sha, candidate = store_seed(op, path)
    # Claims non-contiguous inputs too, which the kernel's flat row addressing would read wrongly.
    write_user_table(record_for(op, sha, dataclasses.replace(candidate.domain, contiguous=False)))
    args = spec.make_inputs(PROBLEM_SHAPES[op], torch.float32, DEVICE, 0)
    with pytest.warns(KforgeFallbackWarning, match="claims more than the kernel's DOMAIN: its domain accepts non-contiguous"):
        out = call(op, args)
    assert_matches_reference(spec, args, out)
    assert by_impl(op) == {"vendor": 1}


@pytest.mark.parametrize("problem", [lambda sha: {"source_sha256": None}, lambda sha: {"impl": "triton:" + "0" * 12}],
                         ids=["no-sha", "impl-mismatch"])
def test_a_record_that_does_not_name_its_kernel_is_refused(problem):
    op, path = "rms_norm", seeds(SPECS["rms_norm"])[0]
    spec = kforge.ops.SPECS[op]
    sha, candidate = store_seed(op, path)
    write_user_table(record_for(op, sha, candidate.domain, **problem(sha)))
    args = spec.make_inputs(PROBLEM_SHAPES[op], torch.float32, DEVICE, 0)
    with pytest.warns(KforgeFallbackWarning, match="source_sha256|does not match its kernel"):
        assert_matches_reference(spec, args, call(op, args))
    assert by_impl(op) == {"vendor": 1}


# -- availability ----------------------------------------------------------------------------------
def test_backend_is_registered_with_its_capabilities():
    backend = BACKENDS[BackendName.TRITON]
    assert isinstance(backend, TritonBackend)
    caps = backend.capabilities
    assert (caps.has_backward, caps.can_torch_compile, caps.cuda_graph_safe, caps.any_layout) == (False, True, True, False)


def test_availability_follows_the_interpreter_and_cuda(monkeypatch):
    backend = TritonBackend()
    spec = kforge.ops.SPECS["softmax"]
    cpu_key = DispatchKey("softmax", "cpu|x|x86_64|torch2.13|triton3.9", "float32", (8, 64))
    cuda_key = DispatchKey("softmax", "cuda|NVIDIA H100|sm90|torch2.13|triton3.6", "float32", (8, 64))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend.available() is None
    assert backend.supports(spec, cpu_key) and backend.supports(spec, cuda_key)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not backend.supports(spec, cpu_key) and backend.supports(spec, cuda_key)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "TRITON_INTERPRET" in backend.available()
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert backend.available() == "triton is not installed"


def test_records_of_cpu_kernels_are_not_routed_without_the_interpreter(monkeypatch):
    op, path = "softmax", seeds(SPECS["softmax"])[0]
    spec = kforge.ops.SPECS[op]
    sha, candidate = store_seed(op, path)
    record = record_for(op, sha, candidate.domain)
    write_user_table(dataclasses.replace(record, key=dataclasses.replace(record.key, device=str(fingerprint("cpu")))))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = spec.make_inputs(PROBLEM_SHAPES[op], torch.float32, "cpu", 0)
    assert_matches_reference(spec, args, call(op, args))
    assert by_impl(op) == {"vendor": 1} and kforge.stats()["ops"][op]["fallback"] == 1


def test_an_evidence_record_round_trips_through_the_table():
    """What the evaluator will write: a triton record with kernel hash and DOMAIN survives the table."""
    op, path = "softmax", seeds(SPECS["softmax"])[1]
    sha, candidate = store_seed(op, path)
    record = record_for(op, sha, candidate.domain)
    record = dataclasses.replace(record, evidence=Evidence(dtypes=("float32",), shapes=((8, 64),), seeds=(0, 1, 2),
                                                           max_error_ratio=0.25))
    write_user_table(record)
    (stored,) = dispatch.ROUTER.table.records(record.key.device, op)
    assert stored.source_sha256 == sha and stored.domain == candidate.domain and stored.impl == impl_id(sha)
