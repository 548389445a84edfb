"""The catalog's seed kernels, every one of every built-in op (`OpSpec.seed_kernels`, so a new seed
joins these tests by being named in its spec), run by Triton (its interpreter on a CPU):

- the seed grid: each seed stored, given the verdict of an accepted kernel and a record per key,
  then forced through the router (`kforge.use`) at every shape of the CPU sets (smoke, odd, edge)
  and every dtype of the op, against the op's fp64 reference (`kforge.testing`). Where the
  seed's DOMAIN (evaluated here from its literal, not by kforge's `Domain`) excludes a call (a
  dtype, a dim past its limit, a non-contiguous layout), the pinned call is refused and the
  unpinned call is served by vendor although the record is there; empty calls never reach a kernel;
- the harness: each seed accepted end to end in this process (static check, verification with
  every trial, timing, records), on the smallest shapes of its spec's sets;
- forced paths: seeds with their tunables set outside their search space, so that the loops,
  splits and tiles the CPU shapes never reach run, verified and their launches checked.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import kforge
from helpers import accept_kernel, load_with_tunables, make_record, relayout, write_user_table
from kforge.backends.triton import TritonBackend, impl_id
from kforge.catalog import seeds
from kforge.device import fingerprint
from kforge.errors import KforgeInputError, KforgePinError
from kforge.evaluate import harness
from kforge.evaluate.correctness import verify
from kforge.evaluate.executors import InProcessExecutor
from kforge.ops import SPECS as _ALL, is_builtin
from kforge.router.table import ScoreTable
from kforge.store import KernelStore
from kforge.testing import assert_matches_reference

pytestmark = pytest.mark.skipif(
    TritonBackend().available() is not None, reason=f"Triton cannot run here: {TritonBackend().available()}")

SPECS = {name: spec for name, spec in _ALL.items() if is_builtin(name)}
SEED_FILES = [(op, path) for op, spec in SPECS.items() for path in seeds(spec)]
SEED_IDS = [path.stem for _, path in SEED_FILES]
CPU_SETS = ("smoke", "odd", "edge")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LARGEST_BUILT = 1 << 20  # elements: a call past a dim's limit is built only up to this size


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def store_seed(op: str, path):
    """The seed in the kernel store with an accepted kernel's verdict; returns (sha, candidate)."""
    sha = KernelStore().put(path.read_text(), op=op, provider="catalog", attempt_id=f"seed:{path.stem}").sha256
    accept_kernel(sha, op)
    return sha, KernelStore().load(sha, SPECS[op])


def signature(spec, args) -> str:
    return ",".join(dtype_id(args[i].dtype) for i in spec.tensor_args)


def record(spec, sha: str, candidate, args):
    """A record of the stored seed at `args`' key, claiming its DOMAIN, evidence covering the key."""
    r = make_record(spec.name, spec.problem(args), impl=impl_id(sha), dtypes=signature(spec, args), p50=0.5,
                    domain=candidate.domain, device=str(fingerprint(DEVICE)))
    return dataclasses.replace(r, source_sha256=sha, provider="catalog")


def alignment(t: torch.Tensor) -> int:
    ptr = t.data_ptr()
    return 16 if ptr % 16 == 0 else ptr & -ptr


def inside(domain: dict, spec, args) -> bool:
    """Whether the seed's DOMAIN literal (the dict its file defines) admits the call."""
    tensors = [args[i] for i in spec.tensor_args]
    if "dtypes" in domain and signature(spec, args) not in domain["dtypes"]:
        return False
    if domain.get("contiguous") and not all(t.is_contiguous() for t in tensors):
        return False
    if min(alignment(t) for t in tensors if t.numel()) < domain.get("align", 1):
        return False
    problem = spec.problem(args)
    return all(lo <= problem[spec.problem_dims.index(name)] <= hi for name, (lo, hi) in domain.get("dims", {}).items())


def empty(spec, args) -> bool:
    return any(args[i].numel() == 0 for i in spec.tensor_args)


def by_impl(op: str) -> dict:
    return kforge.stats()["ops"].get(op, {}).get("by_impl", {})


def served_or_refused(spec, impl: str, domain: dict, cases) -> dict:
    """Each case pinned to the seed, then unpinned; returns how many calls each implementation
    should have served, so the caller can compare with what the router counted."""
    entry, want = kforge.ops.ENTRIES[spec.name], {"seed": 0, "vendor": 0}
    for what, args in cases:
        if empty(spec, args):  # nothing to compute: vendor, even pinned
            with kforge.use(spec.name, impl):
                assert_matches_reference(spec, args, entry(*args))
            want["vendor"] += 1
        elif inside(domain, spec, args):
            with kforge.use(spec.name, impl):
                out = entry(*args)
            assert_matches_reference(spec, args, out)
            outs = out if isinstance(out, tuple) else (out,)
            assert all(o.is_contiguous() for o in outs), f"{what}: output strides {[o.stride() for o in outs]}"
            want["seed"] += 1
        else:
            with kforge.use(spec.name, impl), pytest.raises(KforgePinError, match="outside its domain"):
                entry(*args)
            assert_matches_reference(spec, args, entry(*args))  # the record is there; its domain says no
            want["vendor"] += 1
    return want


# -- the seed grid ---------------------------------------------------------------------------------
GRID = [pytest.param(op, path, dtype, id=f"{path.stem}-{dtype_id(dtype)}")
        for op, path in SEED_FILES for dtype in SPECS[op].dtypes]


@pytest.mark.parametrize("op, path, dtype", GRID)
def test_seed_through_the_router_matches_the_reference(op, path, dtype):
    spec = SPECS[op]
    sha, candidate = store_seed(op, path)
    impl = impl_id(sha)
    cases = [(shape, spec.make_inputs(shape, dtype, DEVICE, n)) for n, shape in enumerate(spec.shapes(*CPU_SETS))]
    records = (record(spec, sha, candidate, args) for _, args in cases if not empty(spec, args))
    write_user_table(*{r.key: r for r in records}.values())  # one per key: shapes of one problem share it
    want = served_or_refused(spec, impl, candidate.module.DOMAIN, cases)
    assert by_impl(op) == {k: v for k, v in {impl: want["seed"], "vendor": want["vendor"]}.items() if v}


def past_the_limits(spec, domain: dict, dtype):
    """Calls one past each of the DOMAIN's dim limits, built from the smallest edge shape, where
    make_inputs can build one that small (a limit of 2^30 columns is not tried on a CPU)."""
    smallest = min((s for s in spec.shape_sets["edge"] if 0 not in s), key=lambda s: (math.prod(s), len(s)))
    base = spec.problem(spec.make_inputs(smallest, dtype, "meta", 0))
    for name, (lo, hi) in domain.get("dims", {}).items():
        for value in (lo - 1, hi + 1):
            problem = list(base)
            problem[spec.problem_dims.index(name)] = value
            if value < 1 or math.prod(spec.shape_for(tuple(problem))) > LARGEST_BUILT:
                continue
            args = spec.make_inputs(spec.shape_for(tuple(problem)), dtype, DEVICE, 0)
            try:
                spec.check(args)  # no valid call has the value (rotary's head of 1): nothing to refuse
            except KforgeInputError:
                continue
            if spec.problem(args)[spec.problem_dims.index(name)] == value:  # make_inputs kept it
                yield f"{name}={value}", args


@pytest.mark.parametrize("op, path", SEED_FILES, ids=SEED_IDS)
def test_seed_is_refused_outside_its_domain_and_served_misaligned(op, path):
    """Layouts and sizes, at a dtype the DOMAIN accepts: a non-contiguous input (rows sliced out of
    a wider buffer), a contiguous one starting one element into its storage, and each dim one past
    its limit."""
    spec = SPECS[op]
    sha, candidate = store_seed(op, path)
    impl, domain = impl_id(sha), candidate.module.DOMAIN
    shape = spec.shape_sets["smoke"][0]
    dtype = next(d for d in spec.dtypes if inside(domain, spec, spec.make_inputs(shape, d, DEVICE, 0)))
    base = spec.make_inputs(shape, dtype, DEVICE, 0)
    cases = [(layout, tuple(relayout(layout, a) if isinstance(a, torch.Tensor) else a for a in base))
             for layout in ("sliced_rows", "misaligned")]
    cases += list(past_the_limits(spec, domain, dtype))
    assert not cases[0][1][spec.tensor_args[0]].is_contiguous() and cases[1][1][spec.tensor_args[0]].is_contiguous()
    write_user_table(*{r.key: r for r in (record(spec, sha, candidate, args) for _, args in cases)}.values())
    want = served_or_refused(spec, impl, domain, cases)
    assert by_impl(op) == {k: v for k, v in {impl: want["seed"], "vendor": want["vendor"]}.items() if v}


def test_every_seed_is_served_somewhere_in_the_grid():
    """The grid is not vacuous: each seed's DOMAIN admits some dtype and non-empty shape of the CPU
    sets, and at least one seed's DOMAIN excludes some call of them."""
    excluded = 0
    for op, path in SEED_FILES:
        spec = SPECS[op]
        domain = store_seed(op, path)[1].module.DOMAIN
        calls = [spec.make_inputs(s, d, "meta", 0) for d in spec.dtypes for s in spec.shapes(*CPU_SETS) if 0 not in s]
        admitted = [inside(domain, spec, args) for args in calls]
        assert any(admitted), f"{path.name}: its DOMAIN admits no call of the CPU sets"
        excluded += not all(admitted)
    assert excluded


# -- the harness -----------------------------------------------------------------------------------
def harness_shapes(spec) -> list:
    """smoke's first shape, the edge set's smallest non-empty shape and its empty one (the harness
    adds the long row and secret shapes near these)."""
    edge = spec.shape_sets["edge"]
    smallest = min((s for s in edge if 0 not in s), key=lambda s: (math.prod(s), len(s)))
    return [spec.shape_sets["smoke"][0], smallest, next(s for s in edge if 0 in s)]


@pytest.mark.parametrize("op, path", SEED_FILES, ids=SEED_IDS)
def test_every_seed_passes_the_harness_in_process(op, path):
    spec = SPECS[op]
    domain = store_seed(op, path)[1].module.DOMAIN
    shapes = harness_shapes(spec)
    dtype = next(d for d in spec.dtypes if inside(domain, spec, spec.make_inputs(shapes[0], d, "cpu", 0)))
    result = harness.evaluate_source(path.read_text(), op, dtypes=[dtype], verify_shapes=shapes,
                                     timing_shapes=[shapes[1]], executor=InProcessExecutor())
    assert result.accepted, result.reason
    problems = {tuple(spec.problem(spec.make_inputs(s, dtype, "meta", 0))) for s in shapes if 0 not in s}
    assert signature(spec, spec.make_inputs(shapes[0], dtype, "meta", 0)) in result.evidence.dtypes
    assert problems <= set(result.evidence.shapes), result.evidence.shapes
    records = ScoreTable().records(str(fingerprint("cpu")), op)
    timed = tuple(spec.problem(spec.make_inputs(shapes[1], dtype, "meta", 0)))
    assert {(r.impl, r.key.shape) for r in records} == {(result.impl, timed), ("vendor", timed)}


# -- forced paths ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Forced:
    """A seed with `changes` to its tunables, verified at `shape` in `dtypes`; `launched` checks the
    first launch of `kernel` (its grid and constexprs) took the path meant."""

    stem: str
    changes: dict
    shape: tuple
    kernel: str
    dtypes: tuple
    launched: object
    why: str


F32, BF16, F64 = torch.float32, torch.bfloat16, torch.float64
FORCED = [
    Forced("silu_and_mul_tiled", {"BLOCK": 64, "MIN_PROGRAMS": 1}, (37, 300), "_silu_and_mul_tile", (F32, BF16, F64),
           lambda grid, kw: kw["STEPS"] == 4 and kw["ROWS"] == 32 and grid == (2 * 2,),
           "4 unrolled blocks, the second chunk of each row partial (300 = 256 + 44), its last steps masked; "
           "32-row tiles, the second group partial"),
    Forced("silu_and_mul_persistent", {"BLOCK": 64, "PROGRAMS": 3}, (37, 300), "_silu_and_mul_strided",
           (F32, BF16, F64), lambda grid, kw: kw["ROWS"] == 32 and grid == (3,),
           "3 programs for 2 row groups x 5 column blocks: each loops over 3 or 4 tiles"),
    Forced("cross_entropy_online", {"MAX_BLOCK": 64}, (5, 1000), "_cross_entropy_row", (F32, BF16, F64),
           lambda grid, kw: kw["BLOCK"] == 64 and grid == (5,), "16 blocks per row, the last partial (1000 = 15 * 64 + 40)"),
    Forced("cross_entropy_split", {"BLOCK": 64, "PROGRAMS": 18}, (5, 1000), "_chunk_stats", (F32, BF16, F64),
           lambda grid, kw: kw["BLOCK"] == 64 and grid == (5, 4),
           "4 chunks per row (cdiv(18, 5)) of 4 blocks each, the last chunk 232 logits of 256"),
    Forced("gemv_rowblock", {"DOT_ROWS": 4, "DOT_BLOCK_K": 32, "MIN_PROGRAMS": 1}, (37, 100, 70), "_gemv_block",
           (F32, BF16), lambda grid, kw: kw["DOT"] and kw["ROWS"] == 64 and kw["BLOCK_K"] == 32 and grid == (2, 1),
           "tl.dot from 4 rows: 37 rows in one 64-row tile, 70 features in 64-wide blocks, k = 100 in 32-wide steps"),
    Forced("gemv_rowblock", {"TILE": 256, "BLOCK_N": 2}, (5, 100, 9), "_gemv_block", (F32, BF16),
           lambda grid, kw: not kw["DOT"] and kw["ROWS"] == 8 and kw["BLOCK_K"] == 16 and grid == (5, 1),
           "registers: 5 rows in an 8-row tile, 7 k steps of 16 (the last partial), 9 features in 5 blocks of 2"),
    Forced("gemv_splitk", {"MAX_SPLITS": 3}, (3, 300, 33), "_gemv_slab", (F32, BF16),
           lambda grid, kw: not kw["DOT"] and kw["BLOCK_K"] == 64 and grid == (2, 3, 1),
           "uneven split chunks: 3 splits of k = 300 in whole 64-wide blocks (128, 128, 44)"),
    Forced("gemv_splitk", {"DOT_ROWS": 4, "DOT_BLOCK_K": 32, "WORKSPACE_SHARE": 1}, (5, 100, 70), "_gemv_slab",
           (F32, BF16), lambda grid, kw: kw["DOT"] and kw["ROWS"] == 16 and grid == (2, 4, 1),
           "tl.dot on split chunks: 5 rows in a 16-row tile, four 32-wide chunks of k = 100"),
    Forced("layer_norm_looped", {"MAX_BLOCK": 64}, (5, 300), "_layer_norm_looped", (F32, BF16),
           lambda grid, kw: grid == (5,) and kw["BLOCK"] == 64,
           "five steps, the last covering 44 lanes: lanes end with 5 or 4 elements and Chan's combination weighs them"),
    Forced("rotary_embedding_tiled", {"MAX_HEADS": 4, "MIN_TILE": 256}, (9, 7, 3, 20), "_rotary_embedding_tile", (BF16,),
           lambda grid, kw: (kw["BLOCK_T"], kw["BLOCK_HQ"], kw["BLOCK_HK"]) == (2, 4, 4) and grid == (5 * 3,),
           "neox: tiles of 2 tokens (the last partial), query's 7 heads in two blocks of 4, key's 3 in one"),
    Forced("rotary_embedding_tiled", {"MAX_HEADS": 4, "MIN_TILE": 256}, (9, 7, 3, 22), "_rotary_embedding_tile", (BF16,),
           lambda grid, kw: (kw["BLOCK_T"], kw["BLOCK_HQ"], kw["BLOCK_HK"]) == (2, 4, 4) and grid == (5 * 3,),
           "interleaved: as above"),
]
SEED_PATHS = {path.stem: (op, path) for op, path in SEED_FILES}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on -inf - -inf in masked lanes
@pytest.mark.parametrize("forced", FORCED, ids=[f"{f.stem}-{'-'.join(f.changes)}-{'x'.join(map(str, f.shape))}"
                                               for f in FORCED])
def test_a_seeds_forced_path_is_right(forced):
    op, path = SEED_PATHS[forced.stem]
    spec = SPECS[op]
    candidate, recorder = load_with_tunables(path.read_text(), spec, forced.changes, forced.kernel)
    verdict = verify(spec, candidate.forward, dtypes=list(forced.dtypes), shapes=[forced.shape],
                     domain=candidate.domain, secret_seed=11, secret_shapes=0,
                     replay=False)  # the path's numbers; the harness test runs every trial
    assert verdict.accepted, verdict.reason
    grid, kwargs = recorder.launches[0]
    assert forced.launched(grid, kwargs), f"{forced.why}: launched {grid} {kwargs}"
