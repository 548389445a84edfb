"""One replacement's life: probed against the module's own code, installed as the module's
instance `forward` (the class, the module tree, the state dict and the user's hooks stay as they
were), and undone by `unpatch`.

Replacements are module-level functions of the module (`forward(self, ...)`), bound to it as a
`functools.partial`, with whatever state they keep stored on the module itself, so `copy.deepcopy`
of a patched model gives a patched copy that computes with its own weights, not the original's,
and `torch.save` pickles it."""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
from typing import Callable

import torch
import torch.nn as nn

from kforge.patching import probe
from kforge.patching.report import Entry

MARK = "kforge_patch"  # set on every replacement function: unpatch removes only forwards it finds marked


@dataclasses.dataclass
class Candidate:
    op: str  # the kforge op the replacement routes through
    note: str  # how, as the report says it
    forward: Callable  # forward(module, *args)
    prepare: Callable[[nn.Module], bool] | None = None  # before the probe (False: cannot be tried)
    install: Callable[[nn.Module], None] | None = None  # after the probe agreed
    discard: Callable[[nn.Module], None] | None = None  # after the probe disagreed
    compare: Callable = probe.disagreement  # (new, expected) -> None, or the difference as a sentence


def mark(fn: Callable) -> Callable:
    setattr(fn, MARK, True)
    return fn


def replace_forward(kind: str, where: str, module: nn.Module, candidates: list[Candidate], inputs: tuple) -> Entry:
    """The first candidate that agrees with `module.forward` on `inputs` becomes the module's
    forward (an entry with its op); with none, an entry with no op that says the first disagreement."""
    if "forward" in vars(module):
        if is_marked(vars(module)["forward"]):
            return Entry(kind, where, "", "already patched by an earlier kforge.patch (of a module holding it)")
        return Entry(kind, where, "", "its forward is already replaced on this instance (accelerate's hooks or "
                                      "another patch), so kforge leaves it")
    reasons = []
    with torch.no_grad(), _hooks_detached(module):
        try:
            expected = module.forward(*inputs)
        except Exception as err:  # noqa: BLE001 - a module kforge cannot run alone is left, with the reason
            return Entry(kind, where, "", f"its own forward failed on a probe input ({type(err).__name__}: {err})")
        for cand in candidates:
            if cand.prepare is not None and not cand.prepare(module):
                reasons.append(f"{cand.note}: cannot be built for these weights")
                continue
            try:
                reason = cand.compare(cand.forward(module, *inputs), expected)
            except Exception as err:  # noqa: BLE001 - a replacement that cannot run is one that disagrees
                reason = f"raised {type(err).__name__}: {err}"
            if reason is None:
                module.forward = bind(mark(cand.forward), module)
                if cand.install is not None:
                    cand.install(module)
                return Entry(kind, where, cand.op, cand.note)
            if cand.discard is not None:
                cand.discard(module)
            reasons.append(reason)
    return Entry(kind, where, "", f"its output is not kforge's {candidates[0].op}: {reasons[0]}")


def bind(fn: Callable, module: nn.Module) -> functools.partial:
    """`fn(module, ...)` as the module's forward: a partial of a module-level function pickles
    (torch.save of a patched model) and deep-copies with the module."""
    return functools.partial(fn, module)


def is_marked(forward) -> bool:
    return getattr(getattr(forward, "func", None), MARK, False)


@contextlib.contextmanager
def _hooks_detached(module: nn.Module):
    """The user's forward hooks on `module` and its children do not see the probe's random input
    (activation capture, calibration): detached while it runs, put back as they were."""
    saved = [(m, m._forward_hooks, m._forward_pre_hooks) for m in module.modules()]
    for m, _, _ in saved:
        m._forward_hooks, m._forward_pre_hooks = collections.OrderedDict(), collections.OrderedDict()
    try:
        yield
    finally:
        for m, hooks, pre_hooks in saved:
            m._forward_hooks, m._forward_pre_hooks = hooks, pre_hooks


def restore_forward(module: nn.Module) -> bool:
    """Remove kforge's instance forward from `module`; False when it has none."""
    if not is_marked(vars(module).get("forward")):
        return False
    del module.forward
    return True


def needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
