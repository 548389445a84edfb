"""Rows a record may serve, and secret shapes for user ops and KernelBench files (issue 14, class 7).

The router serves a record no further than its evidence verified (`router.key.reaches`): a
kernel whose grid was fixed for the rows it was verified at is never handed more, and an op whose
shapes are fixed by its definition is served at verified shapes only. Ops from KernelBench files
get secret shapes in the sizes their globals define, with inputs drawn as their own get_inputs()
draws them. Kernels run in Triton's interpreter on the CPU, at small shapes; the routing tests use
the real Triton backend, loading the verified kernel from the store as a user process would.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import kforge
import user_op_defs
from helpers import accept_kernel, cpu_device, make_record, unique_op_name as fresh, write_user_table
from kforge.candidate import load_candidate
from kforge.errors import KforgePinError
from kforge.evaluate.cases import secret_shapes_of
from kforge.evaluate.correctness import Check, verify
from kforge.evaluate.static import check_source
from kforge.ops import get_spec
from kforge.userops import kernelbench
from kforge.userops.build import OpKind, UserOpError
from kforge.userops.untrusted import persist_untrusted
from kforge.records import Evidence, Record
from kforge.router.key import call_info
from kforge.store import KernelStore
from kforge.testing import assert_matches_reference, compare

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "adversarial"
KB = HERE / "kernelbench"
F32 = torch.float32
SECRET = 20240601
# The adversarial files this module holds to their reason (tests/test_adversarial.py counts them).
ROUTED = {"rows_fixed_grid": "rms_norm"}  # accepted where verified; never served beyond it
KERNELBENCH = {"rows_kb_batch_grid": ("rms_rows_scaled", "rms_rows_fixed"), "rows_kb_unit_variance": ("rms_rows_scaled",)}


def stats(op: str) -> dict:
    return kforge.stats()["ops"].get(op, {})


def kernelbench_op(stem: str):
    name = fresh(stem)
    kernelbench.from_kernelbench(KB / f"{stem}.py", name, persist=False)
    return get_spec(name)


def verified(spec, stem: str, **extra):
    """The corpus file `stem` for `spec`: statically clean, loaded, and its verdict on the CPU."""
    path = CORPUS / f"{stem}.py"
    assert check_source(path.read_text(), spec) == []
    candidate = load_candidate(path, f"kforge_test_rows_{stem}_{spec.name}", spec)
    verdict = verify(spec, candidate.forward, device="cpu", dtypes=(F32,), seeds=(0,), secret_seed=SECRET,
                     domain=candidate.domain, **extra)
    return candidate, verdict


def record_it(spec, stem: str, candidate, verdict, shape) -> str:
    """Records for the accepted kernel (the fastest) and vendor at `shape`, with the verdict's
    evidence, as the harness writes them; returns the kernel's impl id."""
    stored = KernelStore().put((CORPUS / f"{stem}.py").read_text(), op=spec.name, provider="test")
    key = call_info(spec, spec.make_inputs(shape, F32, "cpu", 0), cpu_device()).key
    accept_kernel(stored.sha256, spec.name, key.device)  # the verdict the harness writes on acceptance
    records = [make_record(spec.name, key.shape, impl=impl, dtypes=key.dtypes, p50=p50, evidence=verdict.evidence)
               for impl, p50 in ((stored.impl_id, 0.01), ("vendor", 1.0))]
    triton = records[0]
    records[0] = Record(**{**{f: getattr(triton, f) for f in Record.__dataclass_fields__},
                           "source_sha256": stored.sha256, "domain": candidate.domain, "provider": "test"})
    write_user_table(*records)
    return stored.impl_id


# -- the router: never more rows than verified ----------------------------------------------------
def test_a_kernel_with_a_grid_fixed_for_its_rows_is_never_served_beyond_them():
    spec = get_spec("rms_norm")
    candidate, verdict = verified(spec, "rows_fixed_grid", shapes=((16, 64),), secret_shapes=1, layouts=())
    assert verdict.accepted, verdict.reason  # what verification sees of it is right
    assert max(s[0] for s in verdict.evidence.shapes if s[1] == 64) == 16
    impl = record_it(spec, "rows_fixed_grid", candidate, verdict, (16, 64))
    twice = spec.make_inputs((32, 64), F32, "cpu", 5)
    assert not compare(spec, twice, candidate.forward(*twice)).ok  # at 2x the rows it is wrong

    for shape in ((16, 64), (8, 64)):  # its shape, and fewer rows from the nearest record
        args = spec.make_inputs(shape, F32, "cpu", 3)
        assert_matches_reference(spec, args, kforge.ops.rms_norm(*args))
    assert (stats("rms_norm")["hit"], stats("rms_norm")["by_impl"]) == (2, {impl: 2})
    args = spec.make_inputs((32, 64), F32, "cpu", 5)
    assert_matches_reference(spec, args, kforge.ops.rms_norm(*args))  # vendor, counted as a miss
    assert (stats("rms_norm")["miss"], stats("rms_norm")["by_impl"]["vendor"]) == (1, 1)
    with kforge.use("rms_norm", impl), pytest.raises(KforgePinError, match="does not reach 32x64: verified up to 16x64"):
        kforge.ops.rms_norm(*args)


def test_an_op_with_fixed_shapes_is_served_at_verified_shapes_only(fake_triton):
    name = fresh("fixed_relu")
    entry = kforge.define_op(name, "(Tensor x, float scale) -> Tensor", user_op_defs.reference,
                             user_op_defs.make_inputs, shapes=[(8, 32)], fixed_shapes=True, persist=False)
    evidence = Evidence(dtypes=("float32",), shapes=((8, 32), (16, 32)), seeds=(0,), max_error_ratio=0.5)
    write_user_table(make_record(name, (8, 32), impl="triton:test-ok", dtypes="float32", evidence=evidence),
                     make_record(name, (16, 32), impl="triton:test-ok-b", dtypes="float32", evidence=evidence))
    for rows in (8, 16, 4, 12):  # verified and recorded, twice; then rows near them that were never verified
        entry(torch.randn(rows, 32), 0.5)
    assert fake_triton.calls == {"triton:test-ok": 1, "triton:test-ok-b": 1}
    assert (stats(name)["hit"], stats(name)["miss"]) == (2, 2)


# -- secret shapes --------------------------------------------------------------------------------
def test_a_kernelbench_file_varies_the_sizes_its_globals_define_with_its_own_inputs():
    spec = kernelbench_op("rms_rows_scaled")
    assert not spec.fixed_shapes and spec.exact_dims == ("d1",)
    grown, other = secret_shapes_of(spec, [(8, 64)], SECRET, 2)
    assert grown[0] > 8 and grown[1] == 64  # more rows than the file shows, at its width
    assert other[0] < 8 and other[1] > 64
    (x,) = spec.make_inputs((8, 64), F32, "cpu", 4)
    assert 10 < float(x.pow(2).mean()) < 22  # get_inputs() draws randn * 4: mean square 16
    assert torch.equal(x, spec.make_inputs((8, 64), F32, "cpu", 4)[0])  # the seed decides
    (x,) = spec.make_inputs(grown, torch.bfloat16, "cpu", 1)
    assert tuple(x.shape) == grown and x.dtype == torch.bfloat16 and float(x.float().pow(2).mean()) > 10
    module = __import__(f"kforge_user_ops.{spec.name}", fromlist=["batch_size"])
    assert (module.batch_size, module.dim) == (8, 64)  # the globals are restored

    gelu = kernelbench_op("scaled_gelu_rowsum")  # in_features sizes the linear layer: it stays
    assert (gelu.exact_dims, [s[1] for s in secret_shapes_of(gelu, [(8, 32)], SECRET, 2)]) == (("d1",), [32, 32])
    with pytest.raises(UserOpError, match=rf"op '{gelu.name}': shape \(8, 33\): .* only dims \[0\] may change"):
        gelu.make_inputs((8, 33), F32, "cpu", 0)
    fixed = kernelbench_op("rms_rows_fixed")  # get_init_inputs() reads both sizes
    assert fixed.fixed_shapes and secret_shapes_of(fixed, [(8, 64)], SECRET, 2) == []


def test_user_ops_get_secret_shapes_from_their_make_inputs_unless_fixed():
    free = get_spec(_defined(shapes=[(8, 32)]))
    hidden = secret_shapes_of(free, [(8, 32)], SECRET, 2)
    assert len(hidden) == 2 and (8, 32) not in hidden
    for shape in hidden:  # built by the op's own make_inputs, at that shape
        assert tuple(free.make_inputs(shape, F32, "cpu", 0)[0].shape) == shape
    assert secret_shapes_of(get_spec(_defined(shapes=[(8, 32)], fixed_shapes=True)), [(8, 32)], SECRET, 2) == []


def _defined(**options) -> str:
    name = fresh("relu_op")
    kforge.define_op(name, "(Tensor x, float scale) -> Tensor", user_op_defs.reference, user_op_defs.make_inputs,
                     persist=False, **options)
    return name


@pytest.mark.filterwarnings("ignore:overflow encountered")  # the diverging Newton steps, in numpy
@pytest.mark.parametrize("stem, check, holds", [
    ("rows_kb_batch_grid", Check.UNWRITTEN, lambda v: v.case.secret and v.case.shape[0] > 8),
    ("rows_kb_unit_variance", Check.NONFINITE, lambda v: not v.case.secret),  # at the file's own shape
])
def test_kernelbench_cheats_are_rejected_on_the_files_own_inputs_and_sizes(stem, check, holds):
    spec = kernelbench_op("rms_rows_scaled")
    candidate, verdict = verified(spec, stem)
    assert not verdict.accepted and verdict.check == check, verdict.reason
    assert holds(verdict), verdict.reason
    (x,) = (torch.randn(8, 64),)  # plain randn at the file's shape: what verification drew before
    assert compare(spec, (x,), candidate.forward(x)).ok


def test_a_kernelbench_file_that_cannot_vary_is_served_at_its_shape_only():
    spec = kernelbench_op("rms_rows_fixed")
    candidate, verdict = verified(spec, "rows_kb_batch_grid")
    assert verdict.accepted and verdict.evidence.shapes == ((8, 64),), verdict.reason
    impl = record_it(spec, "rows_kb_batch_grid", candidate, verdict, (8, 64))
    entry = getattr(kforge.ops, spec.name)
    for rows in (8, 16, 4):  # its shape; more rows (where its grid is wrong); fewer
        (x,) = spec.make_inputs((8, 64), F32, "cpu", rows) if rows == 8 else (torch.randn(rows, 64),)
        assert_matches_reference(spec, (x,), entry(x))
    assert (stats(spec.name)["hit"], stats(spec.name)["miss"], stats(spec.name)["by_impl"]) == (
        1, 2, {impl: 1, "vendor": 2})


# -- persisted user ops -----------------------------------------------------------------------------
def test_descriptions_without_fixed_shapes_keep_their_old_meaning(kforge_home):
    source = (KB / "rms_rows_scaled.py").read_text()
    old = {"schema": "OP(Tensor in0) -> Tensor", "shapes": [[8, 64]], "dtypes": ["float32"],
           "problem_dims": ["d0", "d1"], "exact_dims": ["d1"]}  # what a kforge before issue 14 described
    for described, fixed in ((old, True), ({**old, "fixed_shapes": False}, False)):
        name = fresh("kb_described")
        persist_untrusted(name, OpKind.KERNELBENCH, source, {**described, "schema": f"{name}(Tensor in0) -> Tensor"},
                          shapes=[(8, 64)], dtypes=["float32"])
        assert json.loads((kforge_home / "ops" / name / "definition.json").read_text())["fixed_shapes"] is fixed
        assert get_spec(name).fixed_shapes is fixed  # the stub this process loads
    name = fresh("kb_described")
    with pytest.raises(UserOpError, match="unusable fixed_shapes"):
        persist_untrusted(name, OpKind.KERNELBENCH, source, {**old, "schema": f"{name}(Tensor in0) -> Tensor",
                                                              "fixed_shapes": "no"}, shapes=[(8, 64)], dtypes=["float32"])
