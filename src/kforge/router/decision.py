"""What the router decided for one call signature (`Decision`), how it was reached (`Kind`), and
the cache-key markers of forced decisions (`Path`). Kept apart from `dispatch`, the hot path that
reads them."""
from __future__ import annotations

import enum
from typing import Callable

from kforge.records import DispatchKey
from kforge.router import misses


class Kind(str, enum.Enum):
    HIT = "hit"  # served by the best eligible table record (vendor included, if it won)
    MISS = "miss"  # the table has no record for this key: vendor, logged for generation
    FALLBACK = "fallback"  # records exist but none could serve (domain, failure): vendor, logged
    PINNED = "pinned"  # forced by `kforge.use` or KFORGE_PIN
    EMPTY = "empty"  # zero elements: nothing to compute, vendor returns the empty result


LOGGED = (Kind.MISS, Kind.FALLBACK)  # the kinds the miss log counts


class Decision:
    __slots__ = ("fn", "impl", "kind", "key", "calls", "quiet", "flushed", "reason", "retired", "plain", "checked")

    def __init__(self, fn: Callable, impl: str, kind: Kind, key: DispatchKey | None, reason: str = ""):
        self.fn = fn
        self.impl = impl
        self.kind = kind
        self.key = key
        self.calls = 0
        self.quiet = 0  # calls made under `misses.uncounted()`: in stats, never in the miss log
        self.flushed = 0  # counted calls already handed to the miss log
        self.reason = reason
        self.retired = False  # its counts moved to Router.retired
        self.plain = self.checked = None  # a logged decision's fn without and with the quiet count

    @property
    def counted(self) -> int:
        """The calls the miss log is owed (all of them, less those made under `uncounted()`)."""
        return self.calls - self.quiet


def quiet_aware(d: Decision) -> None:
    """Give a logged decision a second function that counts a call under `misses.uncounted()` on
    `d.quiet`, served (`d.fn`) only while some `uncounted()` block is open in the process
    (`set_quiet`): a miss outside them pays nothing for the check, and only MISS and FALLBACK
    decisions have it. Counted after the call returns, so a call that raises (and may be taken back
    by `uncount`) never makes `quiet` exceed `calls`. Call with the router's lock held."""
    fn, active = d.fn, misses.uncounted_active

    def call(*args):
        out = fn(*args)
        if active():
            d.quiet += 1
        return out

    d.plain, d.checked = fn, call
    d.fn = call if misses.quiet_anywhere() else fn


def set_quiet(decisions, on: bool) -> None:
    """Serve the logged `decisions` with (on) or without the quiet count; under the router's lock."""
    for d in decisions:
        if d.checked is not None:
            d.fn = d.checked if on else d.plain


class Path:
    """The first element of a forced decision's cache key (`OpRouter.decisions`): a plain object, so
    hashing the key per call costs a C-level identity hash (an Enum member's `__hash__` is Python)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"Path.{self.name}"


PINNED = Path("PINNED")  # `kforge.use` / KFORGE_PIN
COMPILED = Path("COMPILED")  # chosen when a graph was compiled by the kforge backend
PER_CALL = object()  # a compiled decision: the compiled choice cannot serve this signature, route it
