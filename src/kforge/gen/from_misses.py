"""`kforge generate --from-misses`: which logged misses to work on first.

The miss log (`kforge.router.misses`) counts, per key, the calls served by vendor because the
table had nothing usable. A key is worth generating for in proportion to the time a kernel could
save there: calls x (what the key costs today - the roofline floor). "Today" is the best record
at the key if the table has one (fallbacks), else vendor timed now on this device (misses).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from kforge.device import fingerprint
from kforge.errors import UnknownNameError
from kforge.userops.build import UntrustedCodeError, UserOpError
from kforge.ops import get_spec
from kforge.router import misses
from kforge.specs import OpSpec


@dataclasses.dataclass(frozen=True)
class Target:
    op: str
    dtype: str  # the primary input's dtype name
    shape: tuple[int, ...]  # the input shape (as make_inputs takes it) of the missed problem
    calls: int  # misses + fallbacks logged
    current_us: float  # what a call costs today (best record, or vendor timed now)
    floor_us: float | None  # roofline floor at this key on this device
    source: str  # "record" or "vendor timed now"

    @property
    def gap_us(self) -> float:
        return max(self.current_us - (self.floor_us or 0.0), 0.0)

    @property
    def saving_us(self) -> float:
        """Expected time saved over the logged calls if a kernel reached the floor."""
        return self.calls * self.gap_us

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "shape": list(self.shape), "gap_us": self.gap_us,
                "saving_us": self.saving_us}


def spec_of(op: str) -> OpSpec | None:
    """The spec of a logged op, None when this process cannot load it (a user op no longer persisted)."""
    try:
        return get_spec(op)  # a user op persisted under KFORGE_HOME loads here
    except (UnknownNameError, UserOpError):
        return None


def outstanding(device: str | None = None, table=None) -> list[dict]:
    """The miss log's entries (of the device whose fingerprint is `device`, or all) that the table
    does not serve yet, most called first: the keys worth work."""
    entries = [e for e in misses.read_all() if device is None or e.get("device") == device]
    return misses.outstanding(entries, spec_of, table)


def targets(device: str = "cpu", limit: int | None = None, table=None,
            on_progress: Callable[[str], None] | None = None, budget=None) -> list[Target]:
    """The logged misses of `device` that the table does not serve yet, most time to save first
    (at most `limit`). `budget` (a `gen.conclude.Budget`): checked before each vendor timing; once
    it is spent the keys not yet timed are left out (most-called keys are timed first)."""
    from kforge.evaluate import roofline, timing
    from kforge.router.table import ScoreTable

    dev = torch.device(device)
    fp = str(fingerprint(dev))
    table = table or ScoreTable()
    ceilings = roofline.ceilings(dev)
    say = on_progress or (lambda message: None)
    found = []
    for entry in outstanding(fp, table):
        spec = spec_of(entry["op"])
        if spec is None:
            continue
        problem = tuple(entry["shape"])
        shape = spec.shape_for(problem)
        dtype = getattr(torch, entry["dtypes"].split(",")[0])
        records = [r for r in table.records(fp, spec.name) if r.key.dtypes == entry["dtypes"] and r.key.shape == problem]
        if records:
            current, source = min(r.p50_us for r in records), "record"
        elif budget is not None and budget.spent():
            say(f"{budget.why()}: vendor not timed for {spec.name} {entry['dtypes']} {'x'.join(map(str, shape))}; "
                "left out")
            continue
        else:
            say(f"timing vendor for {spec.name} {entry['dtypes']} {'x'.join(map(str, shape))}")
            try:
                args = spec.make_inputs(shape, dtype, dev, 0)
            except UntrustedCodeError:  # an op from an issue: its code runs only in sandboxed workers
                say(f"{spec.name}: no record and its code may not run here: skipped")
                continue
            with misses.uncounted():
                current, source = timing.measure({"vendor": spec.vendor}, args)["vendor"].p50_us, "vendor timed now"
        floor = None
        if ceilings is not None:
            floor = roofline.floor_us(spec.bytes_moved(problem, dtype), spec.flops(problem, dtype), ceilings)
        found.append(Target(spec.name, str(dtype).removeprefix("torch."), shape,
                            int(entry.get("misses", 0)) + int(entry.get("fallbacks", 0)), current, floor, source))
    found.sort(key=lambda t: (-t.saving_us, t.op, t.shape))
    return found[:limit] if limit is not None else found
