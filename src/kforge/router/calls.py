"""How the router keys a call and wraps the implementation that serves it: the decision-cache
signature of a call, and the wrappers a decision's function may get (contiguous outputs, the
autograd guard of an implementation without a backward, the refusal of a pinned one)."""
from __future__ import annotations

from typing import Callable

import torch

from kforge.errors import KforgeInputError, KforgePinError
from kforge.specs import OpSpec


def signature_fn(spec: OpSpec) -> Callable[[tuple], tuple]:
    """The decision-cache key of a call: per tensor (shape, dtype, device, contiguous,
    address mod 16, requires_grad), then the other arguments as they are (so a cached decision
    never lets an invalid scalar through unchecked). Written out for the common arities because
    each tensor attribute read costs 60 to 120 ns on a slow host and a helper call ~60 ns more."""
    tensors = spec.tensor_args
    scalars = tuple(i for i in range(len(spec.arg_names)) if i not in tensors)
    if tensors == (0,) and not scalars:
        return lambda a: (a[0].shape, a[0].dtype, a[0].device, a[0].is_contiguous(), a[0].data_ptr() & 15,
                          a[0].requires_grad)
    if tensors == (0, 1) and scalars == (2,):
        def sig2(a):
            x, y = a[0], a[1]
            return (x.shape, x.dtype, x.device, x.is_contiguous(), x.data_ptr() & 15, x.requires_grad,
                    y.shape, y.dtype, y.device, y.is_contiguous(), y.data_ptr() & 15, y.requires_grad, a[2],
                    a[2].__class__)  # True == 1 == 1.0: the type keeps a bool from reusing a float's decision
        return sig2
    if tensors == (0, 1, 2) and scalars == (3,):
        def sig3(a):
            x, y, z = a[0], a[1], a[2]
            return (x.shape, x.dtype, x.device, x.is_contiguous(), x.data_ptr() & 15, x.requires_grad,
                    y.shape, y.dtype, y.device, y.is_contiguous(), y.data_ptr() & 15, y.requires_grad,
                    z.shape, z.dtype, z.device, z.is_contiguous(), z.data_ptr() & 15, z.requires_grad, a[3],
                    a[3].__class__)
        return sig3

    def part(t):
        return (t.shape, t.dtype, t.device, t.is_contiguous(), t.data_ptr() & 15, t.requires_grad)

    return lambda a: tuple(part(a[i]) if i in tensors else (a[i], a[i].__class__) for i in range(len(a)))


def refuse(spec: OpSpec, args: tuple) -> None:
    """A call whose key could not be read: a tensor that is not dense (sparse, mkldnn, nested: its
    metadata raises when read) is refused by name, then the spec's own check names a bad argument.
    Returns only when neither applies (the caller re-raises what the key raised)."""
    for i in spec.tensor_args:  # first: the spec's check reads shapes, which a nested tensor has not
        t = args[i] if i < len(args) else None
        if isinstance(t, torch.Tensor) and (t.layout != torch.strided or t.is_nested):
            kind = "nested" if t.is_nested else str(t.layout).removeprefix("torch.")
            raise KforgeInputError(spec.name, spec.arg_names[i], f"is a {kind} tensor; kforge.{spec.name} takes dense "
                                   "(strided) tensors: pass .to_dense()")
    spec.check(args)


def contiguous_outputs(fn: Callable) -> Callable:
    """Every kforge op returns contiguous outputs (the fakes say so); implementations may keep an
    odd input layout, so calls with non-contiguous inputs get their outputs made contiguous."""

    def call(*args):
        out = fn(*args)
        if isinstance(out, tuple):
            return tuple(o if o.is_contiguous() else o.contiguous() for o in out)
        return out if out.is_contiguous() else out.contiguous()

    return call


def values_checked(fn: Callable, spec: OpSpec, args: tuple) -> Callable:
    """`fn` behind the spec's `check_values` (indices in range) for a call on CPU tensors; `fn`
    itself otherwise. The signature holds the device, so GPU calls never pay for it."""
    check_values = spec.check_values
    if check_values is None or args[spec.tensor_args[0]].device.type != "cpu":
        return fn

    def call(*args):
        check_values(args)
        return fn(*args)

    return call


def all_contiguous(args: tuple, tensor_args: tuple[int, ...]) -> bool:
    return all(args[i].is_contiguous() for i in tensor_args)


def grad_guard(fast: Callable, differentiable: Callable) -> Callable:
    """For signatures with inputs that require grad: the differentiable vendor path while grad
    mode is on, the chosen implementation otherwise (inference under no_grad)."""
    is_grad_enabled = torch.is_grad_enabled

    def call(*args):
        return differentiable(*args) if is_grad_enabled() else fast(*args)

    return call


def grad_refusal(fn: Callable, op: str, impl_id: str) -> Callable:
    """A pinned implementation without a backward, for inputs that require grad: fine under
    no_grad / inference_mode (the usual inference setup with nn.Parameter weights), refused when
    autograd would need it."""
    is_grad_enabled = torch.is_grad_enabled

    def call(*args):
        if is_grad_enabled():
            raise KforgePinError(op, impl_id, "inputs require grad and it has no backward; "
                                 "call it under torch.no_grad() or pin 'vendor'")
        return fn(*args)

    return call
