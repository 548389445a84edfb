"""The hot path of a routed call, built per op as closures over locals (see `make`), and the op's
call key (`signature`): the native key (`router.native`) where built, else the Python one."""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from kforge.errors import KforgeInputError
from kforge.router import native, pins
from kforge.router.calls import refuse, signature_fn
from kforge.specs import OpSpec

def make(op, eager: tuple | None = None) -> Callable[..., Any]:
    """The hot path of `op` (a `dispatch.OpRouter`), as a closure over locals: attribute lookups cost ~40 ns each here.
    `decisions` is only ever cleared in place, never replaced, so binding it is safe.

    `route(args)` without `eager`; with `eager = (bind, overload)`, the eager entry point
    `kforge.ops.<name>(*args, **kwargs)` itself, the same path written out in one function (a
    Python call and a tuple less per call): arguments bound to the schema when not given
    positionally in full, and calls that must go through the dispatcher (under torch.compile,
    a tensor subclass, a dispatch mode) handed to `overload`."""
    router, spec, decisions = op.router, op.spec, op.decisions
    name, native_key, kinds, python_key = spec.name, op._native_key, op._kinds, op._python_key
    lookup = None if native_key is None else native.load().lookup  # key and dict lookup in one C call
    pin_state, monotonic, decide, failed, uncount = pins.STATE, time.monotonic, op.decide, op.failed, op.uncount
    check, call_pinned = spec.check, op.call_pinned

    def route(args: tuple):
        now = monotonic()
        if now >= router.next_check:
            router.periodic(now)
        if pin_state.active:
            impl = pin_state.lookup(name)
            if impl is not None:
                return call_pinned(args, impl)
        try:
            d = None if lookup is None else lookup(args, kinds, decisions)
            if d is None:  # a miss of the cache, or a call the native key does not describe
                key = (None if native_key is None else native_key(args, kinds)) or python_key(args)
                d = decisions.get(key)
        except (AttributeError, TypeError, RuntimeError):  # not a tensor, an unhashable scalar, a sparse tensor
            refuse(spec, args)  # names the op and the argument
            raise
        if d is None:
            d = decide(args, key)
        d.calls += 1
        try:
            return d.fn(*args)
        except KforgeInputError:  # values refused by the spec's `check_values`: not a failure
            uncount(d)
            raise
        except Exception as exc:
            return failed(d, args, exc)

    if eager is None:
        return route
    bind, overload = eager
    n_args, first, tensors = len(spec.arg_names), spec.tensor_args[0], spec.tensor_args
    plain, is_compiling, dispatch_modes = torch.Tensor, torch.compiler.is_compiling, torch._C._len_torch_dispatch_stack

    def entry(*args, **kwargs):
        if kwargs or len(args) != n_args:
            args = bind(args, kwargs)
        if type(args[first]) is not plain or is_compiling() or dispatch_modes():
            if not all(isinstance(args[i], plain) for i in tensors):
                check(args)  # a list, a float: refused as kforge refuses it, not by the dispatcher's schema
            return overload(*args)
        now = monotonic()
        if now >= router.next_check:
            router.periodic(now)
        if pin_state.active:
            impl = pin_state.lookup(name)
            if impl is not None:
                return call_pinned(args, impl)
        try:
            d = None if lookup is None else lookup(args, kinds, decisions)
            if d is None:
                key = (None if native_key is None else native_key(args, kinds)) or python_key(args)
                d = decisions.get(key)
        except (AttributeError, TypeError, RuntimeError):
            refuse(spec, args)
            raise
        if d is None:
            d = decide(args, key)
        d.calls += 1
        try:
            return d.fn(*args)
        except KforgeInputError:
            uncount(d)
            raise
        except Exception as exc:
            return failed(d, args, exc)

    return entry


def signature(spec: OpSpec) -> tuple[Callable[[tuple], Any], Callable | None, tuple[bool, ...], Callable]:
    """The op's call key: `(signature, native key or None, kinds, Python key)`. With the native key built
    (`router.native`), `signature` is it, with the Python key (`calls.signature_fn`) for the calls
    it does not describe; without it, the Python key alone. Both never share a cache entry: native
    keys are bytes, Python keys tuples."""
    python_key = signature_fn(spec)
    module = native.load()
    if module is None:
        return python_key, None, (), python_key
    native_key = module.key
    kinds = tuple(i in spec.tensor_args for i in range(len(spec.arg_names)))

    def signature(args: tuple):
        return native_key(args, kinds) or python_key(args)

    return signature, native_key, kinds, python_key
