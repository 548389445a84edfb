"""kforge misses: the on-disk miss log, most-called keys first.

Every call that the score table could not serve went to vendor and was counted per key: a miss
(no record for the key) or a fallback (records exist, none could serve: domain, failure). These
are the keys worth generating kernels for. Keys the score table now serves (a record routes
there: `kforge tune` or `kforge generate` filled them) are left out; `--all` lists them too, with
`now_served` in `--json`. A fallback caused by the call's layout (non-contiguous, misaligned) names
that layout.

`--to-issue` renders them as a ready-to-file Kernel request (one op: the most-missed, or --op) on
stdout, its title on stderr:

    kforge misses --to-issue > body.md
    gh issue create --label kernel-request --title "..." --body-file body.md
"""
from __future__ import annotations

from kforge import paths
from kforge.cli._output import device_text, dtypes_text, emit_json, progress, render, shape_text
from kforge.router import misses

HELP = "calls served by vendor because the table had nothing usable, most-called first"


def add_arguments(parser) -> None:
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="only the N most-called keys (with --to-issue: the N most-called shapes)")
    parser.add_argument("--op", default=None, help="only the misses of this op")
    parser.add_argument("--all", action="store_true",
                        help="also the keys the score table now serves (marked; `now_served` in --json)")
    parser.add_argument("--to-issue", action="store_true",
                        help="print a Kernel request issue body for the most-missed op (or --op)")


def run(args) -> int:
    from kforge.gen.from_misses import spec_of

    logged = misses.read_all()
    if args.op is not None:
        logged = [e for e in logged if e["op"] == args.op]
    annotated = misses.annotate(logged, spec_of)
    served = sum(e["now_served"] for e in annotated)
    entries = annotated if args.all else [e for e in annotated if not e["now_served"]]
    if args.to_issue:
        return _to_issue([e for e in annotated if not e["now_served"]], args)
    if args.limit is not None:
        entries = entries[:max(args.limit, 0)]
    if args.json:
        emit_json({"dir": str(paths.misses_dir()), "entries": entries, "now_served": served})
        return 0
    if not entries:
        note = f" ({served} logged key(s) are now served by the table: --all lists them)" if served else ""
        print(f"no outstanding misses logged under {paths.misses_dir()}{note}")
        return 0
    print(render(["device", "op", "dtypes", "shape", "layout", "misses", "fallbacks", "last seen"]
                 + (["now"] if args.all else []),
                 [[device_text(e["device"]), e["op"], dtypes_text(e["dtypes"]), shape_text(e["shape"]),
                   layout_text(e), e["misses"], e["fallbacks"], e.get("last_seen", "")]
                  + (["served" if e["now_served"] else "missing"] if args.all else []) for e in entries],
                 right=(5, 6)))
    return 0


def layout_text(entry: dict) -> str:
    """"-" for a key whose layout did not matter; else the layouts that made it fall back."""
    parts = [("contiguous" if x["contiguous"] else "strided") + f" align {x['aligned']}"
             for x in entry.get("layouts", [])]
    return ", ".join(parts) or "-"


def _to_issue(entries: list[dict], args) -> int:
    from kforge.issues.from_misses import request_from_misses
    from kforge.issues.render import render_body, render_title
    from kforge.issues.request import validate

    from kforge.ops import SPECS, is_builtin

    request = request_from_misses(entries, op=args.op, limit=args.limit)
    # Checked as the machine that answers it sees it: the built-in ops exist there, this machine's
    # persisted user ops do not (the request carries their reference).
    builtin = [name for name in SPECS if is_builtin(name)]
    title, body, problems = render_title(request), render_body(request), validate(request, known=builtin)
    if args.json:
        emit_json({"title": title, "body": body, "request": request.to_json(),
                   "problems": [p.to_json() for p in problems]})
        return 0
    progress(f"title: {title}")
    for problem in problems:  # a user op that is not persisted here: the body needs its reference
        progress(f"before filing, fix {problem.field}: {problem.message}")
    print(body)
    return 0
