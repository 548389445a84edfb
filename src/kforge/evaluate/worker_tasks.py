"""What runs inside a sandboxed worker: everything that touches untrusted candidate code.

`evaluate_stored(payload)` loads the kernel the payload carries (its hash re-checked), proves it correct against
the reference (`correctness.verify`), then times it (through the cached launcher the router would use)
with the vendor in the same run on fresh inputs, checking the outputs of timed calls: every output
exactly a torch.Tensor; on CUDA events every timed call's output bitwise against an untimed call's
on the same inputs (checked against the reference), on graph replays and a CPU the picked calls
and the last (of every batch on a CPU) against the reference. It returns JSON data only; the coordinator
(`harness`) decides what to trust and alone writes the kernel store and the table; a worker sees
neither (its KFORGE_HOME is a fresh one in its scratch dir).
"""
from __future__ import annotations

import time
from typing import Any

from kforge.specs import OpSpec


class TimedOutputMismatch(AssertionError):
    """A timed call returned a wrong answer (result replay or caching)."""


def evaluate_stored(payload: dict[str, Any]) -> dict[str, Any]:
    """payload: op, sha256, source (the kernel's text, hashing to sha256), device, dtypes (names),
    seeds, secret_seed, verify_shapes (or None: the shapes of verify_sets, or of the spec's sets
    that fit the device), timing_shapes. Returns {"verdict": {...}, "timings": [...]}."""
    from kforge.router import misses

    with misses.uncounted():  # a reference or oracle that calls a routed op is kforge's call, not a user's
        return _evaluate(payload)


def _evaluate(payload: dict[str, Any]) -> dict[str, Any]:
    import torch

    from kforge.backends.launcher import cached_launcher
    from kforge.evaluate import correctness, timing
    from kforge.ops import get_spec
    from kforge.records import CallInfo, DispatchKey
    from kforge.router.key import dtype_signature
    from kforge.testing import compare

    started = time.perf_counter()
    spec = get_spec(payload["op"])
    device = torch.device(payload["device"])
    dtypes = [getattr(torch, name) for name in payload["dtypes"]]
    candidate = _load_candidate(payload, spec)
    loaded = time.perf_counter()
    shapes = payload.get("verify_shapes")
    # Given shapes keep the long row of a row op (fp16 accumulation); for another op, (2, 16384) is
    # no long row (gemv: k = 2 and 16384 outputs, 20 s in the interpreter for nothing it tests).
    long_row = None if shapes is None else spec.problem_dims[:1] == ("rows",)
    verdict = correctness.verify(
        spec, candidate.forward, device=device, dtypes=dtypes, shape_sets=payload.get("verify_sets"),
        shapes=None if shapes is None else [tuple(s) for s in shapes], long_row=long_row,
        seeds=tuple(payload["seeds"]), secret_seed=payload.get("secret_seed"), domain=candidate.domain,
        timed=[tuple(s) for s in payload["timing_shapes"]])  # each record is verified at its own key
    verified = time.perf_counter()
    # Where a worker's time goes (`kforge tune --json` shows it): load, verify (cases), time.
    phases = {"load_s": round(loaded - started, 3), "verify_s": round(verified - loaded, 3), "cases": verdict.cases}
    result: dict[str, Any] = {"verdict": verdict_to_json(verdict), "timings": [], "skipped": [],
                              "domain": candidate.domain.to_json(), "phases": phases}
    if not verdict.accepted:
        return result

    def check(calls) -> None:
        for call in calls:
            outcome = compare(spec, call.args, call.out)
            if not outcome.ok:
                raise TimedOutputMismatch(f"a timed call of {call.name} returned a wrong result: {outcome.message}")

    for shape in payload["timing_shapes"]:
        shape = tuple(shape)
        for dtype in dtypes:
            args = spec.make_inputs(shape, dtype, device, 0)
            call = CallInfo(DispatchKey(spec.name, "", dtype_signature(args, spec.tensor_args), tuple(spec.problem(args))),
                            contiguous=True, aligned=16, requires_grad=False)
            why = candidate.domain.rejects(call, spec.problem_dims)
            if why is not None:
                result["skipped"].append({"shape": list(shape), "dtype": str(dtype).removeprefix("torch."), "why": why})
                continue
            # The candidate as the router serves it: its cached launcher (forward for two calls,
            # then the recorded replay), so host_us is what a routed call pays and the timed
            # calls' outputs check the replay too.
            fns = {"candidate": _exact_tensors(spec.name, cached_launcher(candidate.forward, candidate.module, args,
                                                                         spec.tensor_args)),
                   "vendor": spec.vendor}

            def make_args(i, shape=shape, dtype=dtype):
                return spec.make_inputs(shape, dtype, device, 1000 + i)

            try:
                if device.type == "cuda":
                    timings = _time_cuda(fns, make_args, check)
                else:
                    timings = timing.time_together(fns, make_args, check=check)
            except (TimedOutputMismatch, timing.OutputChanged) as exc:
                result["verdict"] = {**result["verdict"], "accepted": False, "check": "timed_output",
                                     "reason": f"shape {list(shape)} {dtype}: {exc}"}
                return result
            result["timings"].append({"shape": list(shape), "dtype": str(dtype).removeprefix("torch."),
                                      "dtypes": call.key.dtypes, "problem": list(call.key.shape),
                                      "timings": {name: t.to_json() for name, t in timings.items()}})
    phases["time_s"] = round(time.perf_counter() - verified, 3)
    return result


def _load_candidate(payload: dict[str, Any], spec: OpSpec):
    """The kernel from the payload's `source`, re-hashed against its `sha256` and imported from a
    store in this worker's own scratch KFORGE_HOME: the worker never reads the user's store (it
    cannot see it) and nothing it writes reaches the coordinator's."""
    from kforge.store import KernelStore, sha256_of

    source = payload.get("source")
    if not isinstance(source, str):
        raise ValueError(f"evaluate_stored: the payload for op {payload['op']!r} carries no kernel source "
                         "(the sandboxed worker cannot read the kernel store)")
    if sha256_of(source) != payload["sha256"]:
        raise ValueError(f"evaluate_stored: the source for op {payload['op']!r} does not hash to {payload['sha256']}")
    store = KernelStore()  # under the worker's scratch KFORGE_HOME
    store.put(source, op=payload["op"], provider="sandbox")
    return store.load(payload["sha256"], spec)


def _exact_tensors(op: str, fn):
    """`fn` with every output of every call (timed ones included) checked to be exactly a
    torch.Tensor: a subclass that computes on first touch would be timed at its launch only. A
    type check per output: ~0.1 us of host time per call, inside the timed region."""
    import torch

    def call(*args):
        out = fn(*args)
        for o in (out if type(out) in (tuple, list) else (out,)):
            if type(o) is not torch.Tensor:
                raise TimedOutputMismatch(f"a timed call of {op} returned a {type(o).__name__}, not exactly a "
                                          "torch.Tensor (a subclass can compute outside the timed region)")
        return out

    return call


def _time_cuda(fns, make_args, check):
    from kforge.evaluate import timing
    from kforge.evaluate.timing.cuda import GRAPH_BELOW_US

    # Every candidate call timed by events is compared bitwise with an untimed call on the same
    # inputs (that one checked against the reference); graph replays check picked calls.
    timings = timing.time_together(fns, make_args, check=check, exact=("candidate",))
    if min(t.p50_us for t in timings.values()) < GRAPH_BELOW_US:
        # Microsecond kernels: events mostly see the launch; graph replays see the kernel.
        graphed = timing.time_together(fns, make_args, graph=True, check=check)
        timings = {name: _with_host(graphed[name], timings[name]) for name in fns}
    return timings


def _with_host(graphed, evented):
    import dataclasses

    return dataclasses.replace(graphed, host_us=evented.host_us, wall_us=evented.wall_us)


def verdict_to_json(verdict) -> dict[str, Any]:
    return {
        "accepted": verdict.accepted,
        "reason": verdict.reason,
        "check": None if verdict.check is None else verdict.check.value,
        "case": None if verdict.case is None else str(verdict.case),
        "trial": None if verdict.trial is None else verdict.trial.value,
        "max_error_ratio": verdict.max_error_ratio,
        "evidence": None if verdict.evidence is None else verdict.evidence.to_json(),
        "cases": verdict.cases,
        "error_types": list(verdict.error_types),
    }


def describe_user_op(payload: dict[str, Any]) -> dict[str, Any]:
    """payload: name, kind (an `OpKind` value), source, shapes, dtypes. Builds the op from
    code that came from an untrusted source (an issue) and returns what the coordinator needs to
    know about it without running that code itself (`kforge.userops.untrusted.describe_here`)."""
    from kforge.userops.untrusted import describe_here

    return describe_here(payload)


def time_compile(payload: dict[str, Any]) -> dict[str, Any]:
    """payload: op, shape, dtype (name), device. torch.compile of the op's reference timed at one
    key, inside the sandbox: for ops whose code may not run in the coordinator (from an issue)."""
    import torch

    from kforge.evaluate.calibrate import calibrate
    from kforge.ops import get_spec

    spec = get_spec(payload["op"])
    records = calibrate(spec, tuple(payload["shape"]), getattr(torch, payload["dtype"]), payload["device"],
                        backends=("inductor",))
    return {"p50_us": records[0].p50_us if records else None}
