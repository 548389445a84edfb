"""torch.library registration of kforge ops: define + impl + fake + autograd.

Not `@torch.library.custom_op`, which measured 13 to 28 us per call more than a bare launch on an
H100 (shared/BASELINES.md): eager calls bypass the dispatcher altogether (see `router.dispatch`),
and the registered op is what torch.compile, opcheck and `torch.ops.kforge.*` see.
The backward recomputes the reference under torch.func.vjp: correct for every op, fast for none;
eager calls that need gradients are served by the vendor's own autograd instead.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from kforge.specs import OpSpec

NAMESPACE = "kforge"
_LIB: torch.library.Library | None = None


def library() -> torch.library.Library:
    global _LIB
    if _LIB is None:
        _LIB = torch.library.Library(NAMESPACE, "DEF")
    return _LIB


def register(spec: OpSpec, impl: Callable) -> "torch._ops.OpOverload":
    """Define `kforge::<spec.name>` with `impl` as its kernel on every device; returns the overload."""
    lib = library()
    lib.define(spec.schema)
    lib.impl(spec.name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(spec.qualname, _make_fake(spec), lib=lib)
    torch.library.register_autograd(spec.qualname, _make_backward(spec), setup_context=_make_setup(spec), lib=lib)
    return getattr(getattr(torch.ops, NAMESPACE), spec.name).default


COMPILED = "compiled"  # the overload kforge's torch.compile backend bakes its choice into


def compiled_schema(spec: OpSpec) -> str:
    """`<name>.compiled(<the op's arguments, no defaults>, str impl) -> <the op's returns>`."""
    parsed = torch._C.parse_schema(spec.qualname + spec.schema[len(spec.name):])
    arguments = ", ".join(f"{a.type} {a.name}" for a in parsed.arguments)
    returns = spec.schema[spec.schema.rindex("->"):]
    return f"{spec.name}.{COMPILED}({arguments}, str impl) {returns}"


def register_compiled(spec: OpSpec, impl: Callable[[tuple, str], Any]) -> "torch._ops.OpOverload":
    """Define `kforge::<spec.name>.compiled`: the op with the implementation chosen at compile time
    as a last argument, so the choice is part of the graph (and of Inductor's cache key)."""
    lib = library()
    lib.define(compiled_schema(spec))
    n_args = len(spec.arg_names)

    def kernel(*args):
        return impl(args[:n_args], args[n_args])

    lib.impl(f"{spec.name}.{COMPILED}", kernel, "CompositeExplicitAutograd")
    checked_fake = _make_fake(spec)
    name = f"{spec.qualname}.{COMPILED}"
    torch.library.register_fake(name, lambda *args: checked_fake(*args[:n_args]), lib=lib)
    setup, backward = _make_setup(spec), _make_backward(spec)

    def setup_compiled(ctx, inputs, output):
        setup(ctx, inputs[:n_args], output)

    def backward_compiled(ctx, *grads):
        return (*backward(ctx, *grads), None)

    torch.library.register_autograd(name, backward_compiled, setup_context=setup_compiled, lib=lib)
    return getattr(getattr(torch.ops, NAMESPACE), spec.name).compiled


def _make_fake(spec: OpSpec):
    """The spec's fake behind the spec's argument checks. The dispatcher runs the Meta kernel (this
    fake) whenever any argument is on the meta device, so unchecked, `torch.ops.kforge.rms_norm(x,
    weight_on_meta)` with x on the CPU returned an uninitialised CPU tensor. Under torch.compile the
    same checks turn a bad call into a KforgeInputError at trace time."""
    fake, check, bind, n_args = spec.fake, spec.check, spec.bind, len(spec.arg_names)

    def checked_fake(*args, **kwargs):
        if kwargs or len(args) != n_args:
            args = bind(args, kwargs)
        check(args)
        return fake(*args)

    return checked_fake


def _make_setup(spec: OpSpec):
    tensor_args = spec.tensor_args

    def setup_context(ctx, inputs, output):
        ctx.inputs = tuple(inputs)
        # Integer tensors (indices, positions, targets) take no gradient; they ride along as inputs.
        ctx.wrt = tuple(i for i in tensor_args if inputs[i].is_floating_point())
        ctx.save_for_backward(*(inputs[i] for i in ctx.wrt))
        outs = output if isinstance(output, tuple) else (output,)
        ctx.mark_non_differentiable(*(o for o in outs if not o.is_floating_point()))

    return setup_context


def _make_backward(spec: OpSpec):
    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        args = list(ctx.inputs)
        wrt = ctx.wrt
        differentiable: list[int] = []

        def forward(*tensors):
            for i, t in zip(wrt, tensors):
                args[i] = t
            outs = spec.reference(*args)
            outs = outs if isinstance(outs, tuple) else (outs,)
            differentiable[:] = [n for n, o in enumerate(outs) if o.is_floating_point()]
            return tuple(outs[n] for n in differentiable)  # integer outputs carry no cotangent

        outputs, vjp = torch.func.vjp(forward, *saved)
        cotangents = tuple(torch.zeros_like(o) if grads[n] is None else grads[n]
                           for n, o in zip(differentiable, outputs))
        tensor_grads = vjp(cotangents)
        result = [None] * len(ctx.inputs)
        for i, g in zip(wrt, tensor_grads):
            result[i] = g
        return tuple(result)

    return backward
