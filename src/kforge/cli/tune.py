"""kforge tune: extend the implementations kforge has (vendor, Inductor, catalog seeds, stored kernels)
to new keys, verified and timed at exactly those keys, with no model provider.

    kforge tune rms_norm --shape 17x3584 --dtype bf16     # one op at given shapes
    kforge tune --key softmax:bf16:4x151936 --key gemv:bf16:1x3584x18944
    kforge tune --from-misses --limit 20                  # the keys this device's calls missed
    kforge tune --model qwen2.5-7b --tokens 1,16,512      # every op's keys in a model's forward

Each key's results are written as they are measured, so a run stopped by `--max-seconds` (checked
between candidates) or by Ctrl-C keeps what it finished. Exit 1 when a key got no record, with why.
`kforge generate` is the tool for new kernels; `tune` re-uses the known ones at new shapes.
"""
from __future__ import annotations

import os

from kforge.cli import _args
from kforge.cli._output import emit_json, number, progress, render, shape_text, wrap, wrapped_progress
from kforge.errors import KforgeError

HELP = "verify and time the known implementations of ops at new keys (given, missed, or a model's) and record them"


def add_arguments(parser) -> None:
    parser.add_argument("op", nargs="?", help="the op whose --shape/--set keys to tune")
    parser.add_argument("--key", action="append", default=None, metavar="OP:DTYPE:SHAPE",
                        help="one key, e.g. rms_norm:bf16:17x3584 (repeatable)")
    parser.add_argument("--from-misses", action="store_true", help="the keys this device's miss log holds")
    parser.add_argument("--limit", type=int, default=None, help="with --from-misses: the most-called keys first, this many")
    parser.add_argument("--model", action="append", default=None, metavar="NAME",
                        help="every op's keys in this model's forward (repeatable; names from kforge.shapes)")
    parser.add_argument("--tokens", default=None, metavar="N,N,...",
                        help="with --model: token counts (default: the data file's decode and prefill counts)")
    parser.add_argument("--ops", default=None, metavar="OP,OP", help="with --model or --from-misses: only these ops")
    parser.add_argument("--no-inductor", action="store_true", help="skip torch.compile of the reference")
    parser.add_argument("--no-candidates", action="store_true", help="vendor (and Inductor) only: no Triton kernels")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="time budget, checked between candidates; what is done is kept")
    _args.add_problem_arguments(parser)


def keys_from_args(args, device: str) -> list:
    """The TuneKeys the arguments name, in order, without repeats."""
    import torch

    from kforge.gen import tune
    from kforge.ops import get_spec

    ops = None if args.ops is None else [o.strip() for o in args.ops.split(",") if o.strip()]
    for name in ops or ():
        get_spec(name)  # an unknown op is named before any work
    if not args.op and (args.shape or args.shape_set):
        raise KforgeError("--shape and --set name shapes of an OP: give the op first (kforge tune OP --shape ...)")
    sources = sum(bool(x) for x in (args.op, args.key, args.from_misses, args.model))
    if sources == 0:
        raise KforgeError("name what to tune: an OP with --shape/--set, --key, --from-misses or --model")
    keys = []
    if args.op:
        spec = get_spec(args.op)
        dtypes = [_args.dtype(d) for d in args.dtype] if args.dtype else [d for d in spec.dtypes if d != torch.float64]
        shapes = _args.shapes(args, spec) or list(spec.shapes("smoke"))
        keys += [tune.TuneKey(spec.name, d, s) for s in shapes for d in dtypes]
    for text in args.key or ():
        keys.append(parse_key(text))
    if args.from_misses:
        keys += tune.keys_from_misses(device, limit=args.limit, ops=ops)
    if args.model:
        keys += _model_keys(args, ops)
    return list(dict.fromkeys(keys))


def parse_key(text: str):
    """"rms_norm:bf16:17x3584" -> TuneKey."""
    from kforge.gen.tune import TuneKey
    from kforge.ops import get_spec

    parts = text.split(":")
    if len(parts) != 3:
        raise KforgeError(f"--key {text!r}: expected OP:DTYPE:SHAPE, e.g. rms_norm:bf16:17x3584")
    spec = get_spec(parts[0])
    dtype = _args.dtype(parts[1])
    if dtype not in spec.dtypes:
        raise KforgeError(f"--key {text!r}: {spec.name} takes {', '.join(str(d).removeprefix('torch.') for d in spec.dtypes)}")
    return TuneKey(spec.name, dtype, _args.shape(parts[2]))


def _model_keys(args, ops) -> list:
    import torch

    from kforge.gen.tune import TuneKey

    dtype = _args.dtype(args.dtype[0]) if args.dtype else torch.bfloat16
    tokens = None
    if args.tokens:
        try:
            tokens = [int(t) for t in args.tokens.split(",") if t.strip()]
        except ValueError:
            raise KforgeError(f"--tokens {args.tokens!r}: expected token counts like 1,16,512") from None
        if not tokens or any(t <= 0 for t in tokens):
            raise KforgeError(f"--tokens {args.tokens!r}: token counts must be positive integers")
    from kforge import shapes

    out = []
    for name in args.model:
        model = shapes.model(name)
        for op, problems in shapes.keys(model, tokens=tokens, ops=ops, dtype=dtype).items():
            out += [TuneKey(op, d, tuple(s)) for s, d in problems]
    return out


def run(args) -> int:
    from kforge.gen import tune

    device = _args.device(args.device)
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    keys = keys_from_args(args, device)
    if not keys:
        progress("nothing to tune: no keys (the miss log has none for this device?)")
        if args.json:
            emit_json({"device": device, "keys": [], "candidates": [], "stopped": None, "seconds": 0})
        return 0
    progress(f"tuning {len(keys)} key(s) of {len({k.op for k in keys})} op(s) on {device}")
    with _args.executor(args.executor) as executor:  # closing it stops its spare workers
        report = tune.tune(keys, device=device, inductor=not args.no_inductor, candidates=not args.no_candidates,
                           record=not args.no_record, max_seconds=args.max_seconds, executor=executor,
                           on_progress=wrapped_progress)
    failed = report.missing if not args.no_record else []
    if args.json:
        emit_json(report.to_json())
    else:
        _print(report)
    return 1 if failed else 0


def _print(report) -> None:
    rows = []
    for k in report.keys:
        ratio = k.vendor_us / k.routed_us if k.vendor_us and k.routed_us else None
        rows.append([k.key.op, str(k.key.dtype).removeprefix("torch."), shape_text(k.key.shape), k.routed or "-",
                     number(k.routed_us, 2), number(k.vendor_us, 2), "-" if ratio is None else f"{ratio:.2f}x",
                     len(k.recorded)])
    print(render(["op", "dtype", "shape", "routed", "us", "vendor us", "vs vendor", "records"], rows,
                 right=(4, 5, 6, 7)))
    accepted = sum(c.verdict == "accepted" for c in report.candidates)
    print(wrap(f"{len(report.keys)} key(s), {len(report.candidates)} candidate(s) ({accepted} accepted) "
               f"in {report.seconds:.0f} s" + (f"; stopped: {report.stopped}" if report.stopped else "")))
    for c in report.candidates:
        if c.verdict not in ("accepted",):
            print(wrap(f"  {c.impl} ({c.origin}, {c.dtype}): {c.verdict}{': ' + c.reason if c.reason else ''}"))
    for k in report.missing:
        print(wrap(f"  no record at {k.key}: {k.reason}"))
