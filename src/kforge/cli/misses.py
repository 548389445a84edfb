"""kforge misses: the on-disk miss log, most-called keys first.

Every call that the score table could not serve went to vendor and was counted per key: a miss
(no record for the key) or a fallback (records exist, none could serve: domain, failure). These
are the keys worth generating kernels for.
"""
from __future__ import annotations

from kforge import paths
from kforge.cli._output import device_text, dtypes_text, emit_json, render, shape_text
from kforge.router import misses

HELP = "calls served by vendor because the table had nothing usable, most-called first"


def add_arguments(parser) -> None:
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the N most-called keys")


def run(args) -> int:
    entries = misses.read_all()
    if args.limit is not None:
        entries = entries[:max(args.limit, 0)]
    if args.json:
        emit_json({"dir": str(paths.misses_dir()), "entries": entries})
        return 0
    if not entries:
        print(f"no misses logged under {paths.misses_dir()}")
        return 0
    print(render(["device", "op", "dtypes", "shape", "misses", "fallbacks", "last seen"],
                 [[device_text(e["device"]), e["op"], dtypes_text(e["dtypes"]), shape_text(e["shape"]),
                   e["misses"], e["fallbacks"], e.get("last_seen", "")] for e in entries], right=(4, 5)))
    return 0
