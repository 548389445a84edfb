"""kforge bench OP: evaluate every known implementation of an op on given keys and record them.

Vendor and Inductor are calibrated (`kforge.evaluate.calibrate`); the catalog's seed kernels and
every kernel already in the store for the op go through the full harness (static checks,
sandboxed verification, timing in the same run as vendor). The results land in the score table,
so the router picks the fastest verified implementation per key.
"""
from __future__ import annotations

import os

from kforge.cli import _args
from kforge.cli._output import dtypes_text, emit_json, number, progress, render, shape_text

HELP = "evaluate vendor, inductor, catalog seeds and stored kernels for an op and record the winners"


def add_arguments(parser) -> None:
    parser.add_argument("op", help="the op to benchmark")
    parser.add_argument("--no-inductor", action="store_true", help="skip torch.compile of the reference")
    parser.add_argument("--no-candidates", action="store_true",
                        help="calibrate vendor (and inductor) only: no catalog seeds or stored kernels")
    _args.add_problem_arguments(parser)


def run(args) -> int:
    import torch

    from kforge.catalog import seeds
    from kforge.evaluate.calibrate import calibrate
    from kforge.evaluate.harness import evaluate_source
    from kforge.ops import get_spec
    from kforge.router.table import ScoreTable
    from kforge.store import KernelStore

    spec = get_spec(args.op)
    device = _args.device(args.device)
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    shapes = _args.shapes(args, spec) or list(spec.shapes("smoke"))
    dtypes = [_args.dtype(d) for d in args.dtype] if args.dtype else [d for d in spec.dtypes if d != torch.float64]
    executor = _args.executor(args.executor)
    table = ScoreTable()

    sources = {}
    if not args.no_candidates:
        sources = {p.read_text(): "catalog" for p in seeds(spec)}
        for stored in KernelStore().list(spec.name):
            sources.setdefault(stored.source(), stored.provider)
    steps = len(shapes) * len(dtypes) + len(sources)
    done = 0
    rows, verdicts = [], []
    backends = ("vendor",) if args.no_inductor else ("vendor", "inductor")
    for shape in shapes:
        for dtype in dtypes:
            done += 1
            progress(f"[{done}/{steps}] calibrating {', '.join(backends)} on {shape_text(shape)} {dtype}")
            records = calibrate(spec, shape, dtype, device, backends=backends)
            if not args.no_record:
                table.write(records)
            rows += [_row(r) for r in records]
    for source, provider in sources.items():
        done += 1
        progress(f"[{done}/{steps}] evaluating a {provider} kernel ({len(source)} bytes) in a sandboxed worker")
        result = evaluate_source(source, spec.name, device=device, dtypes=dtypes, timing_shapes=shapes,
                                 executor=executor, provider=provider, record=not args.no_record, table=table)
        verdicts.append(result)
        rows += [_row(r) for r in result.records if r.impl != "vendor"]
    if args.json:
        emit_json({"op": spec.name, "device": device, "records": [r for r in rows],
                   "candidates": [v.to_json() for v in verdicts]})
        return 0
    print(render(["shape", "dtypes", "impl", "p50 us", "host us", "GB/s", "timing"],
                 [[shape_text(r["shape"]), dtypes_text(r["dtypes"]), r["impl"], number(r["time_us"]["p50"], 2),
                   number(r["host_us"], 1), number(r["gbps"], 0), r["timing"]] for r in rows], right=(3, 4, 5)))
    for v in verdicts:
        print(f"{v.impl}: {v.verdict}{'' if v.accepted else ' - ' + v.reason}")
    return 0


def _row(record) -> dict:
    return record.to_json()
