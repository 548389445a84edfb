"""A new op from an untrusted source (the reference code of a kernel-request issue).

Its code never runs in this process: a sandboxed worker builds the op from it and describes it
(schema, shapes, dtypes), the description and the code are persisted as a user op marked
untrusted, and this process registers a spec whose code refuses to run (`kforge.userops.untrusted`).
Generation then proceeds as for any op: prompts show the code as text, and the candidates are
verified against it inside sandboxed workers, which alone load the real reference. The sandbox
(bubblewrap: `kforge.evaluate.isolation`) keeps secrets out of the worker's environment, hides the
user's files and the network, and bounds its time and memory; where it cannot run, this refuses.
"""
from __future__ import annotations

from kforge.errors import KforgeError
from kforge.evaluate.sandbox import run_isolated
from kforge.ops import SPECS, get_spec
from kforge.userops import load, persist
from kforge.userops.build import OpKind, check_name
from kforge.userops.kernelbench import kernelbench_problems
from kforge.userops.untrusted import Trust, persist_untrusted

DESCRIBE = "kforge.evaluate.worker_tasks:describe_user_op"


class NewOpError(KforgeError):
    """The request's reference could not be turned into an op."""


def define_untrusted(name: str, kind: OpKind, source: str, shapes, dtypes, *, tolerance_scale: float = 1.0,
                     timeout_s: float = 120.0, memory_mb: int = 6144):
    """Register (and persist) op `name` from untrusted `source` (`kind`: a KernelBench-style file, or
    `reference(...)` plus `make_inputs(shape, dtype, device, seed)`), its error budget scaled by
    `tolerance_scale` (a request's tolerance); returns its OpSpec."""
    check_name(name)
    if name in SPECS or name in persist.persisted():
        raise NewOpError(f"op {name!r} already exists: a request for a new op must use a new name")
    if kind is OpKind.KERNELBENCH:
        problems = kernelbench_problems(source)
        if problems:
            raise NewOpError(f"the reference of {name!r} is not a KernelBench-style file: {'; '.join(problems)}")
    payload = {"name": name, "kind": kind.value, "source": source, "shapes": [list(s) for s in shapes],
               "dtypes": list(dtypes), "tolerance_scale": float(tolerance_scale)}
    outcome = run_isolated(DESCRIBE, payload, timeout_s=timeout_s, memory_mb=memory_mb)
    if not outcome.ok:
        why = outcome.error or f"{outcome.status.value} (exit {outcome.exit_code})"
        raise NewOpError(f"building op {name!r} from its reference failed in the sandbox: {why}")
    persist_untrusted(name, kind, source, outcome.value, shapes=shapes, dtypes=dtypes, tolerance_scale=tolerance_scale)
    load.load(name, Trust.NO_CODE)  # its code came from the request: only the sandbox runs it
    return get_spec(name)
