"""kforge evaluate FILE --op OP: prove a candidate kernel correct and time it against vendor.

The candidate is one Python file defining `forward(...)` with the op's signature, the
@triton.jit kernels it launches, and optionally `DOMAIN`. It is checked statically here, then
stored, verified and timed in a sandboxed worker. Exit status: 0 accepted, 1 rejected. With
--json: one object whose `verdict` is "accepted" or "rejected" and whose `reason` says why.
On a CPU, Triton runs in its interpreter (TRITON_INTERPRET=1 is set for the worker): correctness
is real, timings are CPU wall times, labelled as such and keyed to the CPU.
"""
from __future__ import annotations

import os
from pathlib import Path

from kforge.cli import _args
from kforge.cli._output import dtypes_text, emit_json, number, progress, render, shape_text, wrap
from kforge.errors import KforgeError

HELP = "verify and time one candidate kernel file (exit 0 accepted, 1 rejected)"


def add_arguments(parser) -> None:
    parser.add_argument("file", type=Path, help="the candidate's Python source")
    parser.add_argument("--op", required=True, help="the op it implements (see `kforge table`)")
    parser.add_argument("--provider", default="user", help="recorded as the kernel's provider")
    _args.add_problem_arguments(parser)


def run(args) -> int:
    from kforge.evaluate.harness import evaluate_source
    from kforge.ops import get_spec

    spec = get_spec(args.op)
    try:
        source = args.file.read_text()
    except OSError as exc:
        raise KforgeError(f"cannot read {args.file}: {exc}") from None
    device = _args.device(args.device)
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # inherited by the worker (allow-listed)
    shapes = _args.shapes(args, spec)
    dtypes = [_args.dtype(d) for d in args.dtype] if args.dtype else None
    progress(f"evaluating {args.file} as kforge.{spec.name} on {device} ...")
    result = evaluate_source(source, spec.name, device=device, dtypes=dtypes, timing_shapes=shapes,
                             executor=_args.executor(args.executor), provider=args.provider,
                             record=not args.no_record)
    if args.json:
        emit_json({**result.to_json(), "not_recorded": None if result.records or args.no_record else not_recorded(result)})
    else:
        print(report(result, args.no_record))
    return 0 if result.accepted and (result.records or args.no_record) else 1


def not_recorded(result) -> str:
    """Why an accepted kernel got no record: every timed key outside its DOMAIN, or none timed."""
    if result.skipped:
        return "every timing shape is outside the kernel's DOMAIN (" + "; ".join(
            f"{shape_text(s['shape'])} {s['dtype']}: {s['why']}" for s in result.skipped[:3]) + ")"
    return "no timing shape was measured"


def report(result, no_record: bool = False) -> str:
    if not result.accepted:
        lines = [f"REJECTED {result.impl or ''} ({result.check}): {result.reason}".replace("  ", " ")]
        if result.case:
            lines.append(f"failing case: {result.case}")
        return wrap("\n".join(lines))
    ev = result.evidence
    head = (f"ACCEPTED {result.impl} for {result.op}: verified on {len(ev.shapes)} problems x {len(ev.dtypes)} dtype "
            f"signatures x {len(ev.seeds)} seeds, worst error {ev.max_error_ratio:.2f} of the budget")
    rows = []
    for m in result.measurements:
        r = m.roofline
        rows.append([shape_text(m.shape), dtypes_text(m.key.dtypes), number(m.candidate.p50_us, 2),
                     number(m.vendor.p50_us, 2), f"{m.speedup:.2f}x", number(m.candidate.host_us, 1),
                     "-" if r is None else f"{r.gbps:.0f}", "-" if r is None else f"{100 * r.fraction_of_ceiling:.0f}%",
                     "-" if r is None else r.bound, m.candidate.kind])
    table = render(["shape", "dtypes", "p50 us", "vendor us", "speedup", "host us", "GB/s", "%ceil", "bound", "timing"],
                   rows, right=(2, 3, 4, 5, 6, 7))
    tail = [f"skipped (outside DOMAIN): {s['shape']} {s['dtype']}: {s['why']}" for s in result.skipped]
    written = (f"{len(result.records)} records written to the score table" if result.records else
               "nothing recorded (--no-record)" if no_record else f"nothing recorded: {not_recorded(result)}")
    return wrap("\n".join([head, table, *tail, written]))
