"""kforge generate: fill gaps in the score table with verified Triton kernels.

    kforge generate rms_norm --shape 32x4096 --dtype bf16 --provider catalog --rounds 3 --variants 4
    kforge generate --from-misses --limit 3          # the logged misses worth the most time first
    kforge generate rms_norm --resume RUN_ID          # continue an interrupted run
    kforge generate --spec-file problem.py             # a KernelBench-style file as a new op

Each round asks the provider for N variants (continuing the top-K lineages), checks and evaluates
them in sandboxed workers (verification against the fp64 reference, timing with vendor in the same
run), archives every attempt (`kforge attempts`), and records the fastest verified kernel per key
in the score table. Prints a before/after table per key; progress goes to stderr. `--max-seconds`
covers the whole command (vendor timing of --from-misses keys, every op's run) and is checked
before every provider call and candidate evaluation; what was done is kept. Exits 1 when a run
failed although it ran (its provider failed on every attempt, or it accepted candidates and
recorded nothing: the reason is printed and in --json as `failure`). Providers:
catalog (default: seed kernels and their tunables, no key, no network), anthropic, openai (any
OpenAI-compatible server with --base-url), command (any program reading the prompt on stdin).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

from kforge.cli import _args
from kforge.cli._output import dtypes_text, emit_json, number, progress, render, shape_text, wrap, wrapped_progress
from kforge.errors import KforgeError

HELP = "generate, verify, time and record kernels for an op (or for the logged misses)"


def add_arguments(parser) -> None:
    from kforge.gen.config import add_provider_arguments

    parser.add_argument("op", nargs="?", help="the op to generate kernels for (omit with --from-misses)")
    parser.add_argument("--spec-file", default=None, metavar="FILE",
                        help="a KernelBench-style file (class Model, get_inputs, get_init_inputs) defining the op; "
                             "registered and persisted as a user op named OP (default: the file's stem)")
    parser.add_argument("--from-misses", action="store_true",
                        help="work on the keys of the miss log, most expected time saved first")
    parser.add_argument("--limit", type=int, default=None, help="with --from-misses: at most this many keys")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of variants (default: %(default)s)")
    parser.add_argument("--variants", type=int, default=4, help="variants per round (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=2, help="lineages kept between rounds (default: %(default)s)")
    parser.add_argument("--target-speedup", type=float, default=None,
                        help="stop once the best kernel beats vendor by this factor (geometric mean over keys)")
    parser.add_argument("--target-fraction", type=float, default=None,
                        help="stop once the best kernel reaches this fraction of the roofline on every key")
    parser.add_argument("--token-budget", type=int, default=None, help="tokens (in + out) the run may spend (LLM providers)")
    parser.add_argument("--max-seconds", type=float, default=None, help="time budget of the run")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN_ID",
                        help="continue an interrupted run (default: the latest unfinished run of OP)")
    _args.add_problem_arguments(parser)
    add_provider_arguments(parser)


def run(args) -> int:
    from kforge.gen import run_state, search
    from kforge.gen.conclude import Budget
    from kforge.gen.config import config_from_args
    from kforge.gen.providers import make_provider

    if args.spec_file and args.from_misses:
        raise KforgeError("--spec-file defines one op; it does not combine with --from-misses")
    if not args.spec_file and bool(args.op) == bool(args.from_misses):
        raise KforgeError("give an OP, or --from-misses (not both)")
    device = _args.device(args.device)
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    config = config_from_args(args)
    provider = make_provider(config)  # a missing key fails here, before anything is defined or written
    if args.spec_file:
        args.op = _define_from_file(args.spec_file, args.op)
    settings = run_state.Settings(rounds=args.rounds, variants=args.variants, top_k=args.top_k,
                                  target_speedup=args.target_speedup, target_fraction=args.target_fraction,
                                  max_tokens=args.token_budget, max_seconds=args.max_seconds)
    budget = Budget(time.monotonic(), args.max_seconds)
    jobs = _jobs(args, device, budget)
    executor = _args.executor(args.executor)
    results, not_run = [], []
    try:
        for op, shapes, dtypes, resume in jobs:
            if budget.spent():
                not_run.append(op)
                continue
            progress(f"generate {op} on {device} with {provider.name}: shapes "
                     + (", ".join(shape_text(s) for s in shapes) if shapes else
                        "(resumed)" if resume else "(the op's smoke set)"))
            left = None if args.max_seconds is None else args.max_seconds - budget.elapsed()
            result = search.run(op, provider, dataclasses.replace(settings, max_seconds=left), device=device,
                                dtypes=dtypes, shapes=shapes, executor=executor, resume=resume, model=config.model,
                                record=not args.no_record, on_progress=wrapped_progress)
            results.append(result)
            progress(wrap(f"{op}: {result.status}; {result.attempts} attempts, {result.accepted} accepted, "
                          f"{result.recorded} record(s) written ({result.seconds:.0f} s); run id {result.run_id}"))
    finally:
        executor.close()
        provider.close()
    stopped = budget.why() if budget.spent() else None
    failures = [f"{r.op}: {r.failure}" for r in results if r.failure]
    if stopped and not results:
        failures.append(f"{stopped} before any run started" + (f" ({', '.join(not_run)} not run)" if not_run else ""))
    if args.json:
        emit_json({"device": device, "provider": provider.name, "runs": [r.to_json() for r in results],
                   "budget_stopped": stopped is not None or any(r.budget_stopped for r in results),
                   "not_run": not_run, "failure": "; ".join(failures) or None})
    else:
        _print(results, not_run, stopped)
    for failure in failures:
        progress(f"generate failed: {failure}")
    return 1 if failures else 0


def _define_from_file(path: str, name: str | None) -> str:
    """Register the op of a KernelBench-style file (the same definition again is reused)."""
    from pathlib import Path

    from kforge.ops import SPECS
    from kforge.userops import load, persist
    from kforge.userops.kernelbench import from_kernelbench

    from kforge.ops.registry import is_builtin
    from kforge.userops.build import UserOpError, check_name

    if name is None:
        name = Path(path).stem.lower()
        try:
            check_name(name)
        except UserOpError:
            raise KforgeError(f"--spec-file {path}: its file name {Path(path).stem!r} is not an op name "
                              "(letters, digits, _): name the op, `kforge generate NAME --spec-file FILE`") from None
    if is_builtin(name):
        raise KforgeError(f"--spec-file {path}: {name!r} is a built-in op; name this one, "
                          "`kforge generate NAME --spec-file FILE`")
    if name in SPECS or name in persist.persisted():
        load.load(name)
        spec = SPECS[name]
        if spec.reference_source != Path(path).read_text():
            raise KforgeError(f"op {name!r} already exists, defined from another file; name this one, "
                              "`kforge generate NAME --spec-file FILE`")
        progress(f"{name}: the op of {path}, defined before")
        return name
    from_kernelbench(path, name)
    progress(f"{name}: defined from {path} ({SPECS[name].schema}), persisted under {persist.ops_dir()}")
    return name


def _jobs(args, device: str, budget) -> list[tuple]:
    """(op, shapes, dtypes, resume run id) per search run."""
    from kforge.gen import from_misses, run_state

    if args.resume:
        if args.from_misses:
            raise KforgeError("--resume continues one run of an OP; it does not combine with --from-misses")
        run_id = args.resume
        if run_id == "latest":
            pending = run_state.unfinished_runs(args.op)
            if not pending:
                raise KforgeError(f"--resume: no unfinished run of {args.op} under {run_state.runs_dir()}")
            run_id = pending[-1].run_id
        return [(args.op, [], [], run_id)]
    if not args.from_misses:
        from kforge.ops import get_spec

        shapes = _args.shapes(args, get_spec(args.op))
        dtypes = [_args.dtype(d) for d in args.dtype] if args.dtype else None
        return [(args.op, shapes, dtypes, None)]
    targets = from_misses.targets(device, args.limit, on_progress=progress, budget=budget)
    if not targets:
        progress(f"{budget.why()} before any logged key was timed: nothing to generate" if budget.spent()
                 else "the miss log has no outstanding entries for this device: nothing to generate")
        return []
    rows = [[t.op, t.dtype, shape_text(t.shape), t.calls, number(t.current_us, 1), number(t.floor_us, 2),
             number(t.saving_us / 1e3, 2), t.source] for t in targets]
    print(render(["op", "dtype", "shape", "calls", "now us", "floor us", "saving ms", "now from"], rows,
                 right=(3, 4, 5, 6)), file=sys.stderr)
    import torch

    jobs: dict[str, tuple] = {}
    for t in targets:  # one run per op over its keys, in order of expected saving
        shapes, dtypes = jobs.setdefault(t.op, ([], []))[:2]
        if t.shape not in shapes:
            shapes.append(t.shape)
        dtype = getattr(torch, t.dtype)
        if dtype not in dtypes:
            dtypes.append(dtype)
    return [(op, shapes, dtypes, None) for op, (shapes, dtypes) in jobs.items()]


def _print(results, not_run: list[str] = (), stopped: str | None = None) -> None:
    rows = []
    for r in results:
        for k in r.keys:
            before, after = k["before"], k["after"]
            gain = (before["p50_us"] / after["p50_us"]) if before.get("p50_us") and after["p50_us"] else None
            rows.append([r.op, dtypes_text(k["dtype"]), shape_text(k["shape"]), before["impl"], number(before.get("p50_us"), 2),
                         after["impl"], number(after["p50_us"], 2), number(k["vendor_p50_us"], 2),
                         "-" if gain is None else f"{gain:.2f}x"])
    if rows:
        print(render(["op", "dtype", "shape", "before", "us", "after", "us", "vendor us", "gain"], rows,
                     right=(4, 6, 7, 8)))
    elif any(r.accepted for r in results):
        print("candidates were accepted, but nothing was recorded: the table is unchanged")
    else:
        print("no kernel was accepted: the table is unchanged")
    for r in results:
        # A speedup only for a run that measured a recordable result (never "best 0.00x" for nothing).
        best = (f"best {r.best.speedup:.2f}x vs vendor ({r.best.sha256[:12]})" if r.best and r.keys
                else "nothing recorded" if r.accepted else "no accepted kernel")
        print(wrap(f"{r.op}: {r.status}; {r.attempts} attempts, {r.accepted} accepted, {best}; run {r.run_id}"
                   + (f"\n  failed: {r.failure}" if r.failure else "")))
        for k in r.unrecorded_keys:
            print(wrap(f"  not recorded: {k['dtype']} {shape_text(k['shape'])}: {k['why']}"))
    if not_run:
        print(f"not run ({stopped}): {', '.join(not_run)}")
