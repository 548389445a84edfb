"""A kernel request for the op a deployment misses most: `kforge misses --to-issue`.

The miss log (`kforge.router.misses.read_all()`) counts, per (device, op, dtypes, problem), the
calls served by vendor because the score table had nothing usable. One request covers one op: the
one with the most missed calls (or the one asked for), with the shapes of its most-called keys.
A key's problem is the op's own dims; the request takes shapes as `--shape` does (what the op's
`make_inputs` builds from), so each problem goes through the op's `shape_for` (gemv's problem
(m, n, k) is the shape (m, k, n)).
"""
from __future__ import annotations

import re
from typing import Sequence

from kforge.device import DeviceFingerprint, slug
from kforge.errors import KforgeError
from kforge.issues.form import FORM_VERSION, Goal, TargetGpu
from kforge.issues.request import DTYPES, MAX_SHAPES, KernelRequest, known_ops

_GPU = re.compile(r"\b(H100|H200|A100)\b")


def gpu_of(device: str) -> TargetGpu:
    """The form's GPU choice for a device fingerprint string: H100, H200 or A100 when the CUDA
    device's name says so ("NVIDIA H100 80GB HBM3"; a GH200 is not an H200), else any."""
    try:
        fp = DeviceFingerprint.parse(device)
    except ValueError:
        return TargetGpu.ANY
    m = _GPU.search(fp.name) if fp.kind == "cuda" else None
    return TargetGpu(m.group(1)) if m else TargetGpu.ANY


def _calls(entry: dict) -> int:
    return int(entry.get("misses", 0)) + int(entry.get("fallbacks", 0))


def _shape(op: str, problem: Sequence[int]) -> tuple[int, ...]:
    from kforge.ops import SPECS

    spec = SPECS.get(op)  # a user op's problem is its first input's shape already
    return spec.shape_for(tuple(problem)) if spec is not None else tuple(problem)


def request_from_misses(entries: Sequence[dict], op: str | None = None, limit: int | None = None) -> KernelRequest:
    """The request for `op` (default: the op with the most missed calls) from miss-log entries, its
    shapes those of the most-called keys (at most `limit`, and at most MAX_SHAPES), its dtypes the
    primary dtypes of those keys, its GPU the one the devices name when they agree. Keys whose
    primary dtype the form does not offer (float64) are left out."""
    usable = [e for e in entries if e["dtypes"].split(",")[0] in DTYPES]
    if op is not None:
        usable = [e for e in usable if e["op"] == op]
    if not usable:
        what = f"of op {op!r} " if op is not None else ""
        raise KforgeError(f"no misses {what}in {', '.join(DTYPES)} are logged: nothing to request")
    if op is None:
        totals: dict[str, int] = {}
        for e in usable:
            totals[e["op"]] = totals.get(e["op"], 0) + _calls(e)
        op = min(totals, key=lambda name: (-totals[name], name))
    chosen = sorted((e for e in usable if e["op"] == op), key=lambda e: -_calls(e))
    cap = MAX_SHAPES if limit is None else max(1, min(limit, MAX_SHAPES))
    shapes: list[tuple[int, ...]] = []
    used = []
    for e in chosen:
        shape = _shape(op, e["shape"])
        if shape not in shapes:
            if len(shapes) == cap:
                continue
            shapes.append(shape)
        used.append((e, shape))
    gpus = {gpu_of(e["device"]) for e, _ in used}
    lines = [f"From the miss log of a kforge deployment (`kforge misses --to-issue`): "
             f"{sum(_calls(e) for e, _ in used)} calls of `{op}` went to vendor because the score table had "
             "nothing usable.", "", "| shape | dtypes | calls | device |", "|---|---|---|---|"]
    lines += [f"| {'x'.join(map(str, shape))} | {e['dtypes']} | {_calls(e)} | {_device_name(e['device'])} |"
              for e, shape in used]
    devices = sorted({e["device"] for e, _ in used})
    lines += ["", f"Measured on {'this device' if len(devices) == 1 else 'these devices'} (the miss log's file "
              "under `<KFORGE_HOME>/misses/`):"] + [f"- {_device_line(d)}" for d in devices]
    # A user op persisted here is new to the machine that answers the request: it gets the op's
    # definition as its reference (what `kforge issue run` there defines the op from).
    from kforge.ops import is_builtin
    from kforge.userops import persist

    user_op = op in persist.persisted() and not is_builtin(op)
    reference = persist.request_source(op) if user_op else None
    return KernelRequest(version=FORM_VERSION, op=op, new_op=user_op or op not in known_ops(), reference=reference,
                         shapes=tuple(shapes), dtypes=tuple(e["dtypes"].split(",")[0] for e, _ in used),
                         gpu=gpus.pop() if len(gpus) == 1 else TargetGpu.ANY, goal=Goal.LATENCY,
                         tolerance=None, notes="\n".join(lines))


def _device_line(device: str) -> str:
    """"`cuda: NVIDIA H100 80GB HBM3` (sm90, torch 2.13, triton 3.5), log `<slug>.json`": what a
    kernel for these misses must be verified on."""
    try:
        fp = DeviceFingerprint.parse(device)
    except ValueError:
        return f"`{_device_name(device)}`, log `{slug(device)}.json`"
    return (f"`{_device_name(device)}` ({fp.capability}, torch {fp.torch}, triton {fp.triton}), "
            f"log `{fp.slug}.json`")


def _device_name(device: str) -> str:
    try:
        fp = DeviceFingerprint.parse(device)
    except ValueError:
        return device.replace("|", "/")
    return f"{fp.kind}: {fp.name}".replace("|", "/")
