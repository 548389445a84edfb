"""Pinning: force one implementation of an op, in a scope or for the whole process.

    with kforge.use("rms_norm", "vendor"): ...
    KFORGE_PIN="rms_norm=vendor,softmax=inductor" python app.py

A pinned implementation never falls back: if it cannot serve a call, the call raises
`KforgePinError` saying why.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import re
from typing import Iterator, Mapping

from kforge.errors import KforgeError

ENV_VAR = "KFORGE_PIN"
BUILTIN_IMPLS = ("vendor", "inductor")
_IMPL_RE = re.compile(r"^(vendor|inductor|[a-z][a-z0-9_]*:[A-Za-z0-9_.\-]+)$")

_scoped: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("kforge_pins", default=None)


class PinState:
    """`active` is read on every call: False until some pin exists, so unpinned calls pay one
    attribute read."""

    def __init__(self) -> None:
        self.active = False
        self.live = 0  # `use` blocks open in any thread
        self._env: Mapping[str, str] | None = None

    def env(self) -> Mapping[str, str]:
        if self._env is None:
            self._env = parse(os.environ.get(ENV_VAR, ""), source=ENV_VAR)
            self.update()
        return self._env

    def update(self) -> None:
        self.active = self.live > 0 or bool(self._env)

    def lookup(self, op: str) -> str | None:
        scoped = _scoped.get()
        if scoped is not None and op in scoped:
            return scoped[op]
        return self.env().get(op)

    def reset(self) -> None:
        """Forget the parsed environment (re-read on the next call); open `use` blocks stay."""
        self._env = None
        self.update()


STATE = PinState()


def validate_impl(impl: str) -> str:
    if not isinstance(impl, str) or not _IMPL_RE.match(impl):
        raise KforgeError(f"kforge: {impl!r} is not an implementation id; use 'vendor', 'inductor' or "
                          "'<backend>:<id>' as `kforge table` lists them")
    return impl


def parse(text: str, source: str) -> dict[str, str]:
    pins = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        op, sep, impl = item.partition("=")
        if not sep or not op.strip():
            raise KforgeError(f"kforge: {source}: expected 'op=implementation', got {item!r}")
        pins[op.strip()] = validate_impl(impl.strip())
    return pins


@contextlib.contextmanager
def use(op: str, impl: str) -> Iterator[None]:
    """Within the block, calls of `op` (in this thread or task) go to `impl` or raise (the op's
    name is checked by `kforge.use`, which knows user ops)."""
    validate_impl(impl)
    STATE.live += 1
    STATE.update()
    token = _scoped.set({**(_scoped.get() or {}), op: impl})
    try:
        yield
    finally:
        _scoped.reset(token)
        STATE.live -= 1
        STATE.update()
