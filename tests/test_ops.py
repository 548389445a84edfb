"""Contract tests over every registered op (`kforge.ops.SPECS`), derived from the op's spec alone.

- the grid: op x dtype x CPU-sized shape set x entry point x seed, values against the reference
  through the one shared `kforge.testing.assert_matches_reference` (on a CPU every call is the
  vendor's: the catalog's seed kernels have their own grid, tests/test_seeds.py);
- `torch.library.opcheck` (schema, fake tensor, autograd registration, aot dispatch);
- the vendor within the budget with room to spare, up to the long row and a decode-sized shape;
- `torch.compile(fullgraph=True)` through both entry points: the graph holds `kforge::<op>`, the
  compiled call goes through the kforge router, and it matches the reference;
- odd layouts (sliced, expanded, transposed, strided last dim, misaligned, one element, zero rows):
  served with the reference's values and the contiguous outputs the fake promises.
Adding an op to the registry adds it to every test here.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch._subclasses.fake_tensor import FakeTensorMode

import kforge
from kforge.ops import SPECS as _ALL, is_builtin
from helpers import relayout
from kforge.evaluate.cases import LONG_ROW
from kforge.testing import assert_matches_reference, compare

# The built-in ops (user ops that other tests define in this process have their own tests).
SPECS = {name: spec for name, spec in _ALL.items() if is_builtin(name)}

CPU_SETS = ("smoke", "odd", "edge")  # the shape sets every op declares for CPU-sized tests
SEEDS = (0, 1)
ENTRIES = ("eager", "torch_ops")


def entry_point(op: str, entry: str):
    """`kforge.ops.<op>` (routed directly) or `torch.ops.kforge.<op>` (through the dispatcher)."""
    return getattr(kforge.ops, op) if entry == "eager" else getattr(torch.ops.kforge, op)


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def shape_id(shape) -> str:
    return "x".join(map(str, shape))


def outputs(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def tensors(args: tuple) -> list[torch.Tensor]:
    return [a for a in args if isinstance(a, torch.Tensor)]


def _grid():
    for op, spec in SPECS.items():
        sets = [s for s in CPU_SETS if s in spec.shape_sets]
        for dtype in spec.dtypes:
            for shape in spec.shapes(*sets):
                yield pytest.param(op, dtype, shape, id=f"{op}-{dtype_id(dtype)}-{shape_id(shape)}")


def test_every_op_declares_the_cpu_shape_sets():
    missing = [(op, s) for op, spec in SPECS.items() for s in CPU_SETS if s not in spec.shape_sets]
    assert not missing, f"ops without a CPU-sized shape set the grid needs: {missing}"
    for op, spec in SPECS.items():
        shapes = spec.shapes(*CPU_SETS)
        assert any(0 in s for s in shapes), f"{op}: no zero-sized shape in {CPU_SETS}"
        assert any(s[-1] % 16 for s in shapes), f"{op}: no unaligned last dim in {CPU_SETS}"
        assert any(len(s) >= 3 for s in shapes), f"{op}: no input of rank 3 or more in {CPU_SETS}"


# -- the grid --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("op, dtype, shape", list(_grid()))
def test_matches_reference(op, dtype, shape, entry, seed):
    spec = SPECS[op]
    args = spec.make_inputs(shape, dtype, "cpu", seed)
    before = [t.clone() for t in tensors(args)]
    out = entry_point(op, entry)(*args)
    assert_matches_reference(spec, args, out)
    for o in outputs(out):
        assert o.is_contiguous(), f"{op}: output with strides {o.stride()} for input {shape}"
        for t in tensors(args):
            if o.numel() and t.numel():
                assert o.untyped_storage().data_ptr() != t.untyped_storage().data_ptr(), \
                    f"{op}: an output aliases an input; the schema declares none"
    for t, b in zip(tensors(args), before):
        assert torch.equal(t, b), f"{op}: an input was written; kforge ops are functional"


# -- the vendor's room in the budget ---------------------------------------------------------------
# Of the budget, the vendor's worst error on any op, dtype and shape below: measured at most 0.42
# (softmax in fp64, against the fp64 oracle: sums in another order; 0.38 silu_and_mul in fp16), and
# 0.62 for cross_entropy in fp32 at (4, 32000). A vendor near 1 would leave generated kernels no
# room, and mean the budget rule or the reference moved.
VENDOR_HEADROOM = 0.8


def _vendor_shapes(spec) -> tuple:
    """The CPU sets, the long row for row ops (where fp16 accumulation shows) and the decode set's
    smallest shape (a real model's size, quick to draw on a CPU)."""
    extra = (LONG_ROW,) if spec.problem_dims[:1] == ("rows",) else ()
    decode = spec.shape_sets.get("decode", ())
    return spec.shapes(*CPU_SETS) + extra + ((min(decode, key=math.prod),) if decode else ())


@pytest.mark.parametrize("op, dtype", [pytest.param(op, dtype, id=f"{op}-{dtype_id(dtype)}")
                                       for op, spec in SPECS.items() for dtype in spec.dtypes])
def test_vendor_is_within_the_budget_with_room_to_spare(op, dtype):
    spec = SPECS[op]
    worst = 0.0
    for shape in _vendor_shapes(spec):
        for seed in range(3 if math.prod(shape) < 1 << 16 else 1):
            args = spec.make_inputs(shape, dtype, "cpu", seed)
            result = compare(spec, args, spec.vendor(*args))
            assert result.ok, f"{shape_id(shape)} seed {seed}: {result.message}"
            worst = max(worst, result.worst_ratio)
    assert worst <= VENDOR_HEADROOM, f"the vendor used {worst:.2f} of the budget"


# -- opcheck ---------------------------------------------------------------------------------------
def _opcheck_cases(spec):  # (dtype, shape, requires_grad, scalars by keyword)
    return ((torch.float32, spec.shape_sets["smoke"][0], True, False),
            (torch.float64, spec.shape_sets["smoke"][-1], True, True),
            (torch.bfloat16, spec.shape_sets["odd"][0], False, False))


@pytest.mark.parametrize("op", list(SPECS))
def test_opcheck(op):
    spec = SPECS[op]
    overload = getattr(torch.ops.kforge, op).default
    for dtype, shape, requires_grad, by_keyword in _opcheck_cases(spec):
        args = spec.make_inputs(shape, dtype, "cpu", 0)
        if requires_grad:
            args = tuple(a.requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                         for a in args)
        kwargs = {}
        if by_keyword:  # the scalars as keywords: the dispatcher hands them to the kernel that way
            kwargs = {spec.arg_names[i]: a for i, a in enumerate(args) if i not in spec.tensor_args}
            args = tuple(a for i, a in enumerate(args) if i in spec.tensor_args)
        # opcheck raises OpCheckError naming the failed check; the dict is its per-check verdict.
        result = torch.library.opcheck(overload, args, kwargs)
        assert set(result.values()) == {"SUCCESS"}, f"{op} {dtype_id(dtype)} {shape}: {result}"


@pytest.mark.parametrize("op", list(SPECS))
def test_opcheck_of_the_overload_compiled_graphs_call(op):
    """`kforge::<op>.compiled(..., impl)`, which the torch.compile backend bakes its choice into."""
    spec = SPECS[op]
    overload = getattr(torch.ops.kforge, op).compiled
    for dtype, shape, requires_grad, _ in _opcheck_cases(spec)[:1]:
        args = tuple(a.requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                     for a in spec.make_inputs(shape, dtype, "cpu", 0))
        result = torch.library.opcheck(overload, (*args, "vendor"))
        assert set(result.values()) == {"SUCCESS"}, f"{op} {dtype_id(dtype)} {shape}: {result}"
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        assert_matches_reference(spec, args, overload(*args, "vendor"))


# -- torch.compile ---------------------------------------------------------------------------------
COMPILE_DTYPE = torch.float32


def _calls(op: str) -> int:
    return kforge.stats()["ops"].get(op, {}).get("calls", 0)


def _graph_ops(graphs) -> set:
    """The op packets called in FX graphs (dynamo records packets for `torch.ops.kforge.x(...)`,
    overloads for what the eager entry resolves to)."""
    found = set()
    for gm in graphs:
        for node in gm.graph.nodes:
            if node.op == "call_function":
                target = node.target
                found.add(target.overloadpacket if isinstance(target, torch._ops.OpOverload) else target)
    return found


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("op", list(SPECS))
def test_torch_compile_fullgraph_matches_eager(op, entry):
    spec = SPECS[op]
    fn = entry_point(op, entry)
    packet = getattr(torch.ops.kforge, op)

    def model(*args):
        # Pointwise work on both sides, so Inductor generates kernels around the op and the op's
        # input is a buffer Inductor allocated.
        out = fn(args[0] * 2.0, *args[1:])
        return out, tuple(o + 1.0 for o in outputs(out))

    # Dynamo caches per code object, and every parametrization shares `model`'s: a copy of the
    # code keeps each test's graphs its own (and clear of the recompile limit).
    model.__code__ = model.__code__.replace()
    backend = CompileCounterWithBackend("inductor")  # records dynamo's graphs, compiles with Inductor
    compiled = torch.compile(model, backend=backend, fullgraph=True, dynamic=False)
    shapes = spec.shape_sets["smoke"]
    for n, shape in enumerate(shapes):
        args = spec.make_inputs(shape, COMPILE_DTYPE, "cpu", n)
        calls = _calls(op)
        got, got_post = compiled(*args)
        # The op survived Inductor (not decomposed or inlined): its kernel, the router, ran.
        assert _calls(op) == calls + 1, f"{op}: the compiled call did not go through the kforge router"
        assert_matches_reference(spec, (args[0] * 2.0, *args[1:]), got)
        # Inductor's code after the op reads the op's own output buffer: + 1.0 rounds the same eagerly.
        torch.testing.assert_close(got_post, tuple(o + 1.0 for o in outputs(got)), rtol=0, atol=0)
    assert backend.frame_count == len(shapes), "one graph per static shape"
    assert packet in _graph_ops(backend.graphs), f"dynamo graph lacks kforge::{op}: {_graph_ops(backend.graphs)}"


# -- odd layouts -----------------------------------------------------------------------------------
VIEW_LAYOUTS = ("sliced_rows", "expanded", "transposed", "strided_last_dim", "misaligned")
SMALL_SHAPES = ("smallest", "zero_size")  # from each op's "edge" set


def _small_shape(spec, which: str):
    edge = spec.shape_sets["edge"]
    if which == "zero_size":
        return next(s for s in edge if 0 in s)
    return min((s for s in edge if 0 not in s), key=lambda s: (math.prod(s), len(s)))


def _layout_args(spec, layout: str, dtype: torch.dtype) -> tuple:
    if layout in SMALL_SHAPES:
        return spec.make_inputs(_small_shape(spec, layout), dtype, "cpu", 0)
    args = spec.make_inputs(spec.shape_sets["smoke"][0], dtype, "cpu", 0)
    return tuple(relayout(layout, a) if isinstance(a, torch.Tensor) else a for a in args)


def _fake_outputs(op: str, args: tuple) -> tuple:
    """What the registered fake promises for `args` (shapes, dtypes, strides)."""
    with FakeTensorMode() as mode:
        fake_args = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
        return outputs(getattr(torch.ops.kforge, op).default(*fake_args))


def _same_strides(a: torch.Tensor, b: torch.Tensor) -> bool:
    return all(sa == sb for n, sa, sb in zip(a.shape, a.stride(), b.stride()) if n > 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=dtype_id)
@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("layout", VIEW_LAYOUTS + SMALL_SHAPES)
@pytest.mark.parametrize("op", list(SPECS))
def test_odd_layouts_are_served(op, layout, entry, dtype):
    spec = SPECS[op]
    args = _layout_args(spec, layout, dtype)
    if layout in VIEW_LAYOUTS:
        x = args[spec.tensor_args[0]]
        assert not x.is_contiguous() or x.data_ptr() % 16, f"{layout} did not make an odd input"
    out = entry_point(op, entry)(*args)
    assert_matches_reference(spec, args, out)
    for o, f in zip(outputs(out), _fake_outputs(op, args), strict=True):
        assert o.is_contiguous(), f"{op} {layout}: output strides {o.stride()}, the fake promises contiguous"
        assert (o.shape, o.dtype) == (f.shape, f.dtype) and _same_strides(o, f), \
            f"{op} {layout}: output {tuple(o.shape)} {o.stride()} {o.dtype}, fake {tuple(f.shape)} {f.stride()} {f.dtype}"
    # Again with the decision cached: the second call takes the hot path.
    assert_matches_reference(spec, args, entry_point(op, entry)(*args))
