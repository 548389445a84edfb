"""The hot path: route one call of a kforge op to an implementation.

Per call, once the call's signature has been seen (`hotpath`): the call key (shapes, dtypes,
devices, contiguity, address alignment, requires_grad, scalar arguments; read in one C call where
`router.native` is built) and the dict lookup, one counter increment, the implementation's call.
Everything else (argument checks, table reads, ranking, loading) happens once per distinct
signature under a lock. Every `CHECK_INTERVAL_S` a call also
checks whether a table file changed (then decisions are dropped and re-made) and whether the miss
counts are due to be flushed to disk.
"""
from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
import warnings
from typing import Any, Callable

from kforge.backends import BACKENDS, BackendName, Implementation, vendor_implementation
from kforge.device import fingerprint
from kforge.errors import KforgeInputError, KforgePinError, UnknownNameError
from kforge.records import DispatchKey, Record
from kforge.router import background, hotpath, misses, pins
from kforge.router.decision import (COMPILED, LOGGED, PER_CALL as _PER_CALL, PINNED, Decision, Kind, Path,
                                    quiet_aware, set_quiet)
from kforge.router.calls import all_contiguous, contiguous_outputs, grad_guard, grad_refusal, refuse, values_checked
from kforge.router.key import call_info, exact_indices, is_empty, nearest_shape, serving_shape
from kforge.router.policy import rank, rejects
from kforge.router.table import ScoreTable, TableWarning
from kforge.specs import OpSpec

log = logging.getLogger("kforge")

CHECK_INTERVAL_S = 1.0


class KforgeFallbackWarning(RuntimeWarning):
    """An implementation failed at call time and was switched off for its key."""


class Router:
    """Process-wide routing state shared by every op."""

    def __init__(self, table: ScoreTable | None = None):
        self.table = table or ScoreTable()
        self.lock = threading.RLock()
        self.ops: dict[str, OpRouter] = {}
        self.next_check = 0.0
        self.last_flush = time.monotonic()
        self.disabled: set[tuple[DispatchKey, str]] = set()
        self.impls: dict[tuple, Implementation] = {}
        self.retired: collections.Counter = collections.Counter()  # (op, kind, impl) -> calls
        self.unflushed: dict[DispatchKey, list[int]] = {}  # key -> [misses, fallbacks]
        self.layouts: dict[DispatchKey, set[misses.Layout]] = {}  # key -> call layouts that made it fall back
        self._atexit = False
        self._flushing = False
        self.tuner: background.Tuner | None = background.Tuner() if background.enabled() else None
        misses.quiet_listeners.append(self._quiet)

    def _quiet(self, on: bool) -> None:
        """An `uncounted()` block opened in a process that had none (on), or the last one closed."""
        with self.lock:
            for op in self.ops.values():
                set_quiet(op.all_decisions(), on)

    def periodic(self, now: float) -> None:
        if not self._atexit:
            self._atexit = True
            atexit.register(self.flush)
        unknown = sorted(set(pins.STATE.env()) - set(self.ops))  # parsed once; turns pinning on
        if unknown:
            raise UnknownNameError(f"op in {pins.ENV_VAR}", unknown[0], self.ops)
        # Only now: while KFORGE_PIN is invalid, env() raises and every call must raise, not just one.
        self.next_check = now + CHECK_INTERVAL_S
        if self.table.changed():
            for op in list(self.ops.values()):
                op.reset()
        if now - self.last_flush >= misses.FLUSH_INTERVAL_S and not self._flushing:
            # Never on the caller's thread: the write takes a file lock another process may hold.
            self._flushing = True
            self.last_flush = now
            threading.Thread(target=self._background_flush, name="kforge-miss-flush", daemon=True).start()
        if self.tuner is not None and self.tuner.due(now):
            threading.Thread(target=self.tuner.offer_from, args=(self,), name="kforge-tune-offer", daemon=True).start()

    def load(self, spec: OpSpec, record: Record) -> Implementation:
        ident = record.ident
        impl = self.impls.get(ident)
        if impl is None:
            impl = BACKENDS[BackendName(record.backend)].load(spec, record)
            self.impls[ident] = impl
        return impl

    def retire(self, d: Decision, op: str) -> None:
        """Keep a dropped decision's counts for stats and the miss log."""
        d.retired = True
        self.retired[(op, d.kind.value, d.impl)] += d.calls
        if d.kind in LOGGED and d.counted > d.flushed:
            counts = self.unflushed.setdefault(d.key, [0, 0])
            counts[0 if d.kind is Kind.MISS else 1] += d.counted - d.flushed
            d.flushed = d.counted

    def _background_flush(self) -> None:
        try:
            self.flush()
        finally:
            self._flushing = False

    def flush(self) -> list:
        """Hand the miss and fallback counts to the on-disk miss log. Never raises; counts that
        could not be written stay queued for the next flush."""
        with self.lock:
            self.last_flush = time.monotonic()
            counts: dict[DispatchKey, tuple[int, int]] = {k: (v[0], v[1]) for k, v in self.unflushed.items()}
            self.unflushed = {}
            for op in self.ops.values():
                for d in op.all_decisions():
                    if d.kind in LOGGED and d.counted > d.flushed:
                        m, f = counts.get(d.key, (0, 0))
                        delta = d.counted - d.flushed
                        counts[d.key] = (m + delta, f) if d.kind is Kind.MISS else (m, f + delta)
                        d.flushed = d.counted
        if not counts:
            return []
        try:
            return misses.merge(counts, {k: set(self.layouts[k]) for k in counts if k in self.layouts})
        except Exception as exc:  # a full disk or a held lock must not break the user's program
            with self.lock:
                for key, (m, f) in counts.items():
                    queued = self.unflushed.setdefault(key, [0, 0])
                    queued[0] += m
                    queued[1] += f
            log.warning("kforge: could not write the miss log (kept the counts for later): %s", exc)
            return []

    def note_miss(self, key: DispatchKey) -> None:
        """A miss seen when a graph was compiled (no call ran): queued for the miss log, unless
        the graph was compiled under `misses.uncounted()`."""
        if misses.uncounted_active():
            return
        with self.lock:
            self.unflushed.setdefault(key, [0, 0])[0] += 1

    def stats(self) -> dict:
        with self.lock:
            per_op: dict[str, dict[str, Any]] = {}
            counted = collections.Counter(self.retired)
            for name, op in self.ops.items():
                for d in op.all_decisions():
                    counted[(name, d.kind.value, d.impl)] += d.calls
            for (name, kind, impl), calls in counted.items():
                if not calls:
                    continue
                row = per_op.setdefault(name, {"calls": 0, **{k.value: 0 for k in Kind}, "by_impl": {}})
                row["calls"] += calls
                row[kind] += calls
                row["by_impl"][impl] = row["by_impl"].get(impl, 0) + calls
            return {"ops": per_op, "disabled": sorted(f"{impl} for {key}" for key, impl in self.disabled)}


class OpRouter:
    """Routing of one op; `__call__` is the hot path.

    One cache, `decisions`, holds the decisions of the three ways a call arrives: routed by the table
    (keyed by the bare signature), pinned by `kforge.use` / KFORGE_PIN (keyed `(PINNED, signature,
    impl)`) and compiled into a graph by the kforge backend (keyed `(COMPILED, signature, impl)`). A
    bare signature starts with a shape or a tuple, never a `Path`, so the keys cannot collide, and each
    way costs one dict lookup per call. Misses of all three are decided by `decide`."""

    def __init__(self, router: Router, spec: OpSpec):
        self.router = router
        self.spec = spec
        self.signature, self._native_key, self._kinds, self._python_key = hotpath.signature(spec)
        self.decisions: dict[tuple, Decision] = {}
        self.vendor = vendor_implementation(spec)
        self._monotonic = time.monotonic

        self.route = self._make_route()

    def __call__(self, args: tuple):
        return self.route(args)

    def _make_route(self) -> Callable[[tuple], Any]:
        return hotpath.make(self)

    def eager_entry(self, bind: Callable, overload: Callable) -> Callable[..., Any]:
        """`kforge.ops.<name>`: see `hotpath.make`."""
        return hotpath.make(self, (bind, overload))

    def call_pinned(self, args: tuple, impl_id: str):
        """A call while `impl_id` is pinned for this op: it serves or the call raises (no fallback)."""
        try:  # the lookup hashes the key: a bad argument fails here, named by the spec's check
            key = (PINNED, self.signature(args), impl_id)
            d = self.decisions.get(key)
        except (AttributeError, TypeError, RuntimeError):
            refuse(self.spec, args)
            raise
        if d is None:
            d = self.decide(args, key, impl_id)
        d.calls += 1
        try:
            return d.fn(*args)
        except KforgeInputError:
            self.uncount(d)
            raise

    def call_compiled(self, args: tuple, impl_id: str):
        """A call from a graph compiled by the kforge backend, which chose `impl_id` at compile time
        (`kforge::<op>.compiled`). Pins still win; an implementation that cannot serve the call
        after all (another layout at run time, switched off after a failure) hands it to `route`."""
        now = time.monotonic()
        if now >= self.router.next_check:
            self.router.periodic(now)  # a changed table drops compiled decisions too
        if pins.STATE.active and pins.STATE.lookup(self.spec.name) is not None:
            return self.route(args)
        try:  # as in call_pinned: no second hash of the key on this hot path
            key = (COMPILED, self.signature(args), impl_id)
            d = self.decisions.get(key)
        except (AttributeError, TypeError, RuntimeError):
            refuse(self.spec, args)
            raise
        if d is None:
            d = self.decide(args, key, impl_id)
        if d is _PER_CALL:
            return self.route(args)
        d.calls += 1
        try:
            return d.fn(*args)
        except KforgeInputError:
            self.uncount(d)
            raise
        except Exception as exc:
            if d.impl != "vendor":
                self.decisions[key] = _PER_CALL  # switched off for its key by `failed`: route from now on
            return self.failed(d, args, exc)

    # -- cold path -----------------------------------------------------------------------------
    def all_decisions(self) -> list[Decision]:
        return [d for d in self.decisions.values() if d is not _PER_CALL]

    def reset(self) -> None:
        with self.router.lock:
            for d in self.all_decisions():
                self.router.retire(d, self.spec.name)
            self.decisions.clear()

    def decide(self, args: tuple, key: tuple, impl_id: str | None = None) -> Decision:
        """The decision for a call whose cache `key` missed, made once under the lock: from the table
        (a bare signature), or for the forced `impl_id` (a `(Path, signature, impl)` key)."""
        spec = self.spec
        with self.router.lock:
            d = self.decisions.get(key)
            if d is not None:
                return d
            spec.check(args)
            if impl_id is None:
                d = self.make_decision(args)
            elif key[0] is PINNED:
                d = self.make_pinned(args, impl_id)
            else:
                d = self.make_compiled(args, impl_id)
            if d is not _PER_CALL and not all_contiguous(args, spec.tensor_args):
                d.fn = contiguous_outputs(d.fn)
            if d is not _PER_CALL:
                d.fn = values_checked(d.fn, spec, args)
                if d.kind in LOGGED:
                    quiet_aware(d)
            self.decisions[key] = d
            return d

    def make_decision(self, args: tuple) -> Decision:
        spec = self.spec
        if is_empty(args, spec.tensor_args):
            return Decision(spec.vendor, "vendor", Kind.EMPTY, None)
        device = str(fingerprint(args[spec.tensor_args[0]].device))
        call = call_info(spec, args, device)
        try:
            records = self.router.table.records(device, spec.name)
        except Exception as exc:  # an unreadable table location must not break an op vendor can serve
            warnings.warn(f"kforge: cannot read the score table ({type(exc).__name__}: {exc}); serving vendor",
                          TableWarning, stacklevel=5)
            records = []
        ranking = rank(spec, records, call, self.router.disabled)
        for record in ranking.eligible:
            try:
                impl = self.router.load(spec, record)
            except Exception as exc:
                self.router.disabled.add((call.key, record.impl))
                warnings.warn(f"kforge.{spec.name}: could not load {record.impl} for {call.key}: {exc}; "
                              "switched off for this key", KforgeFallbackWarning, stacklevel=5)
                continue
            fn = impl.for_call(args)
            if call.requires_grad and not impl.capabilities.has_backward:
                fn = grad_guard(fn, spec.vendor)
            return Decision(fn, impl.id, Kind.HIT, call.key)
        if ranking.rejected or any(key == call.key for key, _ in self.router.disabled):
            reasons = "; ".join(f"{r.impl}: {why}" for r, why in ranking.rejected)
            layout = misses.layout_blamed(spec, records, call, self.router.disabled)
            if layout is not None:
                self.router.layouts.setdefault(call.key, set()).add(layout)
            return Decision(spec.vendor, "vendor", Kind.FALLBACK, call.key, reasons or "switched off")
        return Decision(spec.vendor, "vendor", Kind.MISS, call.key)

    def make_compiled(self, args: tuple, impl_id: str):
        """The decision for a compiled call, or `_PER_CALL` (remembered, so a choice that cannot
        serve costs one warning, not a table read per call)."""
        spec = self.spec
        try:
            d = self.make_pinned(args, impl_id)
        except KforgePinError as exc:
            warnings.warn(f"kforge.{spec.name}: {impl_id}, chosen when the graph was compiled, cannot serve "
                          f"this call ({exc}); routed per call instead", KforgeFallbackWarning, stacklevel=5)
            return _PER_CALL
        if d.key is not None and (d.key, impl_id) in self.router.disabled:
            return _PER_CALL
        d.kind = Kind.EMPTY if is_empty(args, spec.tensor_args) else Kind.HIT
        return d

    def make_pinned(self, args: tuple, impl_id: str) -> Decision:
        spec = self.spec
        if impl_id == "vendor" or is_empty(args, spec.tensor_args):
            return Decision(spec.vendor, "vendor", Kind.PINNED, None)
        device = str(fingerprint(args[spec.tensor_args[0]].device))
        call = call_info(spec, args, device)
        records = [r for r in self.router.table.records(device, spec.name)
                   if r.impl == impl_id and r.key.dtypes == call.key.dtypes]
        # A record whose evidence reaches the call, else the nearest one (its rejection says why).
        shape = (serving_shape(call.key.shape, records, exact_indices(spec))
                 or nearest_shape(call.key.shape, {r.key.shape for r in records}, exact_indices(spec)))
        record = next((r for r in records if r.key.shape == shape), None)
        if record is None:
            if impl_id != BackendName.INDUCTOR.value:
                raise KforgePinError(spec.name, impl_id, f"the score table has no record of it for {call.key}")
            impl = BACKENDS[BackendName.INDUCTOR].load(spec, None)  # buildable for any call
        else:
            why = rejects(spec, record, call, exact_indices(spec), self.router.disabled)
            if why is not None:
                raise KforgePinError(spec.name, impl_id, why)
            impl = self.router.load(spec, record)
        fn = impl.for_call(args)
        if call.requires_grad and not impl.capabilities.has_backward:
            fn = grad_refusal(fn, spec.name, impl_id)
        return Decision(fn, impl_id, Kind.PINNED, call.key)

    def failed(self, d: Decision, args: tuple, exc: Exception):
        """A non-vendor implementation raised: serve this call from vendor, switch the
        implementation off for the key for the rest of the process, warn once."""
        if d.impl == "vendor" or d.kind in (Kind.PINNED, Kind.EMPTY):
            raise exc
        spec = self.spec
        with self.router.lock:
            if (d.key, d.impl) not in self.router.disabled:
                self.router.disabled.add((d.key, d.impl))
                warnings.warn(f"kforge.{spec.name}: {d.impl} failed for {d.key} ({type(exc).__name__}: {exc}); "
                              "served by vendor and switched off for this key for the rest of the process",
                              KforgeFallbackWarning, stacklevel=4)
            self.uncount(d)
            # Routed decisions only: a compiled one that failed was replaced by `_PER_CALL` already.
            stale = [s for s, other in self.decisions.items()
                     if other is not _PER_CALL and not isinstance(s[0], Path) and other.key == d.key]
            for s in stale:
                self.router.retire(self.decisions.pop(s), spec.name)
            self.router.retired[(spec.name, Kind.FALLBACK.value, "vendor")] += 1
            if not misses.uncounted_active():
                self.router.unflushed.setdefault(d.key, [0, 0])[1] += 1
        return spec.vendor(*args)

    def uncount(self, d: Decision) -> None:
        """Take back one call counted on `d` (its counts may have moved to the router meanwhile)."""
        with self.router.lock:
            if d.retired:
                self.router.retired[(self.spec.name, d.kind.value, d.impl)] -= 1
            else:
                d.calls -= 1


ROUTER = Router()


def reset(table: ScoreTable | None = None) -> Router:
    """Forget every decision, disabled implementation, cached table read and pin from the
    environment (tests, and after changing KFORGE_HOME / KFORGE_TABLE / KFORGE_PIN)."""
    with ROUTER.lock:
        ROUTER.flush()
        ROUTER.table = table or ScoreTable()
        ROUTER.disabled.clear()
        ROUTER.impls.clear()
        ROUTER.retired.clear()
        ROUTER.unflushed.clear()
        ROUTER.layouts.clear()
        ROUTER.next_check = 0.0
        for op in ROUTER.ops.values():
            op.decisions.clear()
        pins.STATE.reset()
    return ROUTER
