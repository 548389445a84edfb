"""Gradients through `kforge.ops.<op>` (eager: the vendor's own autograd) and `torch.ops.kforge.<op>`
(the registered backward, a vjp of the reference): gradcheck in fp64 for both (finite differences
of the forward, which no backward shares); in fp32 the vendor's autograd against the reference's
autograd in fp64 (the registered backward is that reference's vjp, so only gradcheck can judge it);
with scalars by keyword, the registered backward against torch's own functional ops. Every output
of an op carries a cotangent, fused_add_rms_norm's two included, together and one at a time.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import kforge
from kforge.ops import SPECS
from kforge.specs import to_dtype

ENTRIES = ("eager", "torch_ops")


def gradcheck_shapes(spec) -> tuple:
    """Each op's smoke shapes and its smallest edge shape: small enough for fp64 gradcheck."""
    edge = [s for s in spec.shape_sets["edge"] if 0 not in s]
    return tuple(spec.shape_sets["smoke"]) + (min(edge, key=lambda s: (math.prod(s), len(s))),)


def fp32_shapes(spec) -> tuple:
    return tuple(spec.shape_sets["smoke"])


def differentiable(spec, args) -> tuple[int, ...]:
    """The floating-point tensor arguments (indices, positions and targets take no gradient)."""
    return tuple(i for i in spec.tensor_args if args[i].is_floating_point())


def entry_point(op: str, entry: str):
    return getattr(kforge.ops, op) if entry == "eager" else getattr(torch.ops.kforge, op)


def outputs(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def with_grad(args: tuple, wanted) -> tuple:
    """Fresh leaves for the tensor arguments at positions `wanted`; the others detached."""
    return tuple(a.detach().clone().requires_grad_(i in wanted) if isinstance(a, torch.Tensor) else a
                 for i, a in enumerate(args))


def cotangents(out, seed: int, which=None) -> tuple:
    """Random cotangents per output (None for outputs not in `which`)."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(o.shape, generator=gen, dtype=torch.float32).to(o.dtype)  # exact in fp64
                 if which is None or n in which else None for n, o in enumerate(outputs(out)))


def input_grads(fn, args: tuple, wanted, seed: int, which=None) -> tuple:
    leaves = with_grad(args, wanted)
    outs = outputs(fn(*leaves))
    # An output that depends on none of the leaves (fused_add_rms_norm's h, for the weight alone) has
    # no graph under the reference; its contribution is zero, as the registered backward returns.
    used = [(o, c) for o, c in zip(outs, cotangents(outs, seed, which)) if c is not None and o.requires_grad]
    if not used:
        return tuple(torch.zeros_like(leaves[i]) for i in wanted)
    # Materialized: an input an output does not depend on (weight, for h) gets zeros, not None.
    return torch.autograd.grad([o for o, _ in used], [leaves[i] for i in wanted], [c for _, c in used],
                               materialize_grads=True)


def _wanted_sets(spec, args):
    """All differentiable tensor arguments, and each alone."""
    wanted = differentiable(spec, args)
    return [wanted] + ([(i,) for i in wanted] if len(wanted) > 1 else [])


def _output_sets(spec):
    return [None] + ([(n,) for n in range(spec.num_outputs)] if spec.num_outputs > 1 else [])


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("op", list(SPECS))
def test_gradcheck_fp64(op, entry):
    spec = SPECS[op]
    fn = entry_point(op, entry)
    for n, shape in enumerate(gradcheck_shapes(spec)):
        args = spec.make_inputs(shape, torch.float64, "cpu", n)
        args = with_grad(args, differentiable(spec, args))
        for which in _output_sets(spec):
            def f(*a, which=which):
                out = outputs(fn(*a))
                return out if which is None else tuple(out[i] for i in which)

            # fast mode: the Jacobian along random directions, one product per output instead of one
            # column per input element (a wrong backward fails it all the same; ~60 s -> ~15 s of the suite).
            assert torch.autograd.gradcheck(f, args, fast_mode=True), f"{op} {shape} outputs {which}"


def _assert_grads_close(op, what, got, oracle, low):
    """Each gradient's error against the fp64 oracle within 2x the fp32 reference's own error plus
    a few units of fp32 resolution at the gradient's scale."""
    for n, (g, want, ref) in enumerate(zip(got, oracle, low)):
        assert g.dtype == ref.dtype and g.shape == ref.shape, f"{op} {what} grad {n}: {g.dtype} {g.shape}"
        g64, ref64 = g.double(), ref.double()
        scale = float(want.abs().max())
        budget = 2 * float((ref64 - want).abs().max()) + 8 * torch.finfo(torch.float32).eps * scale
        err = float((g64 - want).abs().max())
        assert err <= budget, f"{op} {what} grad of input {n}: error {err:.3g} > budget {budget:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("op", list(SPECS))
def test_fp32_vendor_grads_match_reference_autograd(op):
    """Eager calls that need gradients are the vendor's (its own autograd). torch.ops' registered
    backward is the reference's vjp: compared with the reference's autograd it would agree with
    itself, so it is gradcheck's above."""
    spec = SPECS[op]
    fn = entry_point(op, "eager")
    for n, shape in enumerate(fp32_shapes(spec)):
        args = spec.make_inputs(shape, torch.float32, "cpu", n)
        for wanted in _wanted_sets(spec, args):
            for which in _output_sets(spec):
                what = f"{shape} d/d{[spec.arg_names[i] for i in wanted]} of outputs {which or 'all'}"
                got = input_grads(fn, args, wanted, seed=n, which=which)
                low = input_grads(spec.reference, args, wanted, seed=n, which=which)
                oracle = input_grads(spec.reference, to_dtype(args, torch.float64), wanted, seed=n, which=which)
                _assert_grads_close(op, what, got, oracle, low)


def _scalar_args(spec) -> list[int]:
    return [i for i in range(len(spec.arg_names)) if i not in spec.tensor_args]


def _norm(x, weight, eps):
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


# torch's own spelling of each op with an eps: autograd through ATen's kernels, not the reference's.
FUNCTIONAL = {
    "rms_norm": _norm,
    "fused_add_rms_norm": lambda x, residual, weight, eps: (_norm(x + residual, weight, eps), x + residual),
    "layer_norm": lambda x, weight, bias, eps: F.layer_norm(x, (x.shape[-1],), weight, bias, eps),
}


@pytest.mark.parametrize("op", [op for op, spec in SPECS.items() if "eps" in spec.arg_names])
def test_torch_ops_backward_with_scalars_by_keyword(op):
    """The registered backward sees the call's scalars however they were passed (here by keyword,
    with a non-default value), not the schema defaults: gradcheck, and the gradients of torch's
    functional op at that eps."""
    assert op in FUNCTIONAL, f"{op} takes an eps: add its torch functional spelling to FUNCTIONAL"
    spec = SPECS[op]
    scalars = _scalar_args(spec)
    args = spec.make_inputs(spec.shape_sets["smoke"][0], torch.float64, "cpu", 0)
    kwargs = {spec.arg_names[i]: 0.25 for i in scalars}  # large eps: a default would show
    tensors = with_grad(tuple(args[i] for i in spec.tensor_args), range(len(spec.tensor_args)))
    fn = getattr(torch.ops.kforge, op)
    assert torch.autograd.gradcheck(lambda *t: fn(*t, **kwargs), tensors)
    got = input_grads(lambda *t: fn(*t, **kwargs), tensors, range(len(tensors)), seed=0)
    want = input_grads(lambda *t: FUNCTIONAL[op](*t, **kwargs), tensors, range(len(tensors)), seed=0)
    defaults = {name: spec.defaults[name] for name in kwargs}
    default = input_grads(lambda *t: FUNCTIONAL[op](*t, **defaults), tensors, range(len(tensors)), seed=0)
    assert not all(torch.allclose(w, d) for w, d in zip(want, default)), "eps 0.25 should move the gradients"
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("op", list(SPECS))
def test_no_grad_calls_build_no_graph(op, entry):
    spec = SPECS[op]
    args = spec.make_inputs(spec.shape_sets["smoke"][0], torch.float32, "cpu", 0)
    args = with_grad(args, differentiable(spec, args))
    with torch.no_grad():
        out = entry_point(op, entry)(*args)
    assert not any(o.requires_grad for o in outputs(out))
    # The same signature with grad mode on builds a graph again (the decision cache must not
    # have kept the no-grad path); integer outputs (indices) never carry a graph.
    out = entry_point(op, entry)(*args)
    assert all(o.requires_grad == o.is_floating_point() for o in outputs(out))
