"""kforge attempts: what `kforge generate` tried, from the attempts archive.

    kforge attempts list [--op OP] [--limit N]
    kforge attempts show ID [--source | --prompt | --response]
    kforge attempts query [--op OP] [--device TEXT] [--accepted | --rejected] [--run RUN]
                          [--provider P]

IDs may be given by a unique prefix. With --json: list/query print an array, show one object.
"""
from __future__ import annotations

import argparse

from kforge.cli._output import device_text, emit_json, render

HELP = "list, show and query the archived generation attempts"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="the newest attempts")
    listing.add_argument("--op", default=None)
    listing.add_argument("--limit", type=int, default=20, help="newest N (default: %(default)s; 0: all)")
    show = sub.add_parser("show", help="one attempt, whole")
    show.add_argument("id", help="an attempt id or a unique prefix of one")
    part = show.add_mutually_exclusive_group()
    part.add_argument("--source", action="store_true", help="only the extracted source")
    part.add_argument("--prompt", action="store_true", help="only the prompt messages")
    part.add_argument("--response", action="store_true", help="only the provider's answer")
    query = sub.add_parser("query", help="attempts matching filters")
    query.add_argument("--op", default=None)
    query.add_argument("--device", default=None, help="a substring of the device fingerprint, e.g. H100")
    verdict = query.add_mutually_exclusive_group()
    verdict.add_argument("--accepted", action="store_const", const=True, dest="accepted", default=None)
    verdict.add_argument("--rejected", action="store_const", const=False, dest="accepted")
    query.add_argument("--run", dest="run_id", default=None, help="a generate run id")
    query.add_argument("--provider", default=None)
    for p in (listing, show, query):
        # SUPPRESS: unset here keeps `kforge attempts --json list` (the flag main adds) in effect.
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output on stdout")


def run(args) -> int:
    from kforge.gen.archive import Archive

    archive = Archive()
    if args.action == "show":
        attempt = archive.get(args.id)
        if args.json:
            emit_json(attempt.to_json())
        elif args.source:
            print(attempt.source or "(no source was extracted from the answer)")
        elif args.prompt:
            print("\n\n".join(f"## {m['role']}\n{m['content']}" for m in attempt.messages))
        elif args.response:
            print(attempt.response)
        else:
            _show(attempt)
        return 0
    if args.action == "list":
        found = archive.list(args.op)
        found = found[-args.limit:] if args.limit else found
    else:
        found = archive.query(op=args.op, device=args.device, accepted=args.accepted, run_id=args.run_id,
                              provider=args.provider)
    if args.json:
        emit_json([a.to_json() for a in found])
        return 0
    if not found:
        print("no attempts archived yet: run `kforge generate OP`" if args.action == "list"
              else "no attempt matches those filters")
        return 0
    rows = [[a.id, a.op, device_text(a.device), f"{a.round}/{a.variant}", f"{a.provider}/{a.model}", a.verdict,
             "-" if a.best_speedup is None else f"{a.best_speedup:.2f}x", _short(a.reason or a.check or "", 60)]
            for a in found]
    print(render(["id", "op", "device", "round/var", "provider/model", "verdict", "speedup", "reason"], rows))
    return 0


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _show(a) -> None:
    usage = a.usage or {}
    print(f"attempt {a.id} ({a.verdict})\n  op {a.op} on {a.device}\n  run {a.run_id}, round {a.round}, variant "
          f"{a.variant}, parent {a.parent or '-'}\n  provider {a.provider}, model {a.model}, tokens "
          f"{usage.get('input_tokens', 0)} in / {usage.get('output_tokens', 0)} out, {a.latency_s:.1f} s\n"
          f"  source sha256 {a.sha256 or '-'}")
    if a.reason:
        print(f"  reason ({a.check}): {a.reason}" + (f"\n  case: {a.case}" if a.case else ""))
    for m in a.measurements:
        c, v = m["candidate"], m["vendor"]
        print(f"  {'x'.join(map(str, m['shape']))} {m['dtype']}: {c['p50_us']:.2f} us vs vendor {v['p50_us']:.2f} us "
              f"({m['speedup_vs_vendor']:.2f}x)")
    print("\n--- source ---\n" + (a.source or "(none)"))
