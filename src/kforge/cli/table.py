"""kforge table: what the score table holds and where each key is routed.

Lists every record of every layer (bundled < user < KFORGE_TABLE; later wins for the same key and
implementation), grouped per op and key, marking with "->" the implementation the router would
choose for a contiguous, 16-byte aligned call without grad, and saying why others are passed over.

  kforge table --export FILE   all merged records (after --op/--device filters) into one file
  kforge table --import FILE   merge a table file's records into the user table: all or nothing,
                               every record checked first (op name, known device kind, field types)
A fleet shares results by exporting on one machine and importing (or naming the file in
KFORGE_TABLE) on others.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

from kforge.cli._output import WIDTH, device_text, dtypes_text, emit_json, number, render, shape_text
from kforge.errors import KforgeError, TableError
from kforge.ops import get_spec
from kforge.records import CallInfo, Record
from kforge.files import MAX_JSON_BYTES, atomic_write_json
from kforge.router.policy import rank
from kforge.router.table import ScoreTable, parse_table, shard_payload

HELP = "records per op and key, the implementation routed to; --export/--import a table file"


def add_arguments(parser) -> None:
    parser.add_argument("--op", help="only this op")
    parser.add_argument("--device", metavar="SUBSTR", help="only devices whose fingerprint contains SUBSTR")
    io = parser.add_mutually_exclusive_group()
    io.add_argument("--export", metavar="FILE", type=Path, help="write the merged records into one table file")
    io.add_argument("--import", dest="import_file", metavar="FILE", type=Path,
                    help="merge a table file's records into the user table")


def merged_records(op: str | None = None, device: str | None = None) -> list[tuple[str, Record]]:
    """(layer name, record) for every record in force: later layers replace earlier ones."""
    merged: dict = {}
    for layer, record in ScoreTable().all_records():
        if (op is None or record.key.op == op) and (device is None or device in record.key.device):
            merged[record.ident] = (layer.name, record)
    return list(merged.values())


def _spec(op: str):
    """The op's spec: built in, registered here or persisted under KFORGE_HOME (loaded now); None
    for an op this kforge does not know (a record from another install, or a removed user op)."""
    try:
        return get_spec(op)
    except KforgeError:
        return None


def _local_devices() -> set[str]:
    """Fingerprints of this machine's devices: its CPU and every CUDA GPU torch sees."""
    import torch

    from kforge.device import fingerprint

    found = {str(fingerprint("cpu"))}
    if torch.cuda.is_available():
        found |= {str(fingerprint(torch.device("cuda", i))) for i in range(torch.cuda.device_count())}
    return found


def routes(entries: list[tuple[str, Record]]) -> list[dict]:
    """One row per key: its records fastest first, the one chosen, and why others are not."""
    by_key: dict = {}
    for layer, record in entries:
        by_key.setdefault(record.key, []).append((layer, record))
    by_device_op: dict = {}
    for _, record in entries:
        by_device_op.setdefault((record.key.device, record.key.op), []).append(record)
    rows = []
    local = _local_devices()
    for key in sorted(by_key, key=lambda k: (k.op, k.device, k.dtypes, k.shape)):
        spec = _spec(key.op)
        chosen, rejected = None, {}
        if spec is not None:
            call = CallInfo(key=key, contiguous=True, aligned=16, requires_grad=False)
            ranking = rank(spec, by_device_op[(key.device, key.op)], call, here=key.device in local)
            chosen = ranking.eligible[0].impl if ranking.eligible else "vendor"
            rejected = {r.impl: why for r, why in ranking.rejected}
        records = sorted(by_key[key], key=lambda lr: (lr[1].score_us, lr[1].impl))
        rows.append({"op": key.op, "device": key.device, "dtypes": key.dtypes, "shape": list(key.shape),
                     "chosen": chosen, "op_known": spec is not None, "rejected": rejected,
                     "runnable_here": key.device in local,
                     "records": [{**r.to_json(), "layer": layer} for layer, r in records]})
    return rows


def run(args) -> int:
    if args.import_file is not None:
        return import_table(args)
    if args.op is not None:
        get_spec(args.op)  # an unknown op is an error naming it and the known ones, not an empty table
    entries = merged_records(args.op, args.device)
    if args.export is not None:
        return export_table(args, [r for _, r in entries])
    rows = routes(entries)
    if args.json:
        emit_json({"keys": rows})
        return 0
    if not rows:
        print("the score table is empty" + (" for that filter" if args.op or args.device else "")
              + ": every call is served by vendor (try `kforge demo`)")
        return 0
    for op in sorted({row["op"] for row in rows}):
        known = "" if _spec(op) else "  (an op this kforge does not know: not routed)"
        for device in sorted({row["device"] for row in rows if row["op"] == op}):
            elsewhere = not any(r["runnable_here"] for r in rows if r["device"] == device)
            print(f"\n{op} on {device_text(device)}{known}"
                  + ("  (not this machine: -> is its own choice)" if elsewhere and not known else ""))
            print(_op_table([r for r in rows if r["op"] == op and r["device"] == device]))
    print("\n-> the router's choice for a contiguous, aligned call without grad; ceil: share of the device's\n"
          "measured copy ceiling; by: who provided the record; note: why the router passes it over here")
    return 0


RECORD_COLUMNS = ["", "impl", "p50 us", "host us", "GB/s", "ceil", "layer", "by", "note"]


def _op_table(rows: list[dict]) -> str:
    """One op on one device: a line per record, the chosen one marked "->"; why the router passes
    a record over is a numbered note under the table. Keys go in the first two columns; where those
    would take the table past 100 columns (rotary's "bf16,bf16,int64,fp32" at 16384x32x8x128x128x1),
    each key is a line of its own above its records instead."""
    groups, notes = [], []  # (dtypes, shape, the key's record rows)
    for row in rows:
        lines = []
        for rec in row["records"]:
            note = row["rejected"].get(rec["impl"], "")
            if note and note not in notes:
                notes.append(note)
            lines.append(["->" if rec["impl"] == row["chosen"] else "", rec["impl"], number(rec["time_us"]["p50"]),
                          number(rec["host_us"]), number(rec["gbps"]), number(rec["ceiling_fraction"], 2),
                          rec["layer"], rec["provider"], f"[{notes.index(note) + 1}]" if note else ""])
        if row["chosen"] == "vendor" and not any(r["impl"] == "vendor" for r in row["records"]):
            lines.append(["->", "vendor (fallback)", "", "", "", "", "", "", ""])
        groups.append((dtypes_text(row["dtypes"]), shape_text(row["shape"]), lines))
    # ceil: the fraction of the device's measured copy ceiling; by: the provider; note: why passed over
    text = render(["dtypes", "shape", *RECORD_COLUMNS],
                  [[dt if i == 0 else "", sh if i == 0 else "", *line] for dt, sh, lines in groups
                   for i, line in enumerate(lines)], right=(4, 5, 6, 7))
    if max(map(len, text.splitlines())) > WIDTH:
        table = ["  " + line for line in render(RECORD_COLUMNS, [line for _, _, lines in groups for line in lines],
                                                 right=(2, 3, 4, 5)).splitlines()]
        out, at = ["dtypes  shape", *table[:2]], 2
        for dt, sh, lines in groups:
            out.append(f"{dt}  {sh}")
            out += table[at:at + len(lines)]
            at += len(lines)
        text = "\n".join(out)
    wrapped = [textwrap.fill(n, WIDTH, initial_indent=f"[{i}] ", subsequent_indent="    ")
               for i, n in enumerate(notes, 1)]
    return "\n".join([text, *wrapped])


def export_table(args, records: list[Record]) -> int:
    # One writer (this command); the temp file + os.replace keeps concurrent readers safe.
    atomic_write_json(args.export, shard_payload(None, None, records))
    if args.json:
        emit_json({"exported": len(records), "path": str(args.export)})
    else:
        print(f"exported {len(records)} record(s) to {args.export}")
    return 0


def import_table(args) -> int:
    """All or nothing: every record of the file is checked (op name, device kind, every field's
    type) before anything is written, and the records go only to the user table's own shards."""
    path = args.import_file
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise TableError(f"cannot read {path}: {exc.strerror or exc}") from None
    records, _ = parse_table(data, str(path), strict=True)
    records = [r for r in records if (args.op is None or r.key.op == args.op)
               and (args.device is None or args.device in r.key.device)]
    written = ScoreTable().write(records) if records else []
    if args.json:
        emit_json({"imported": len(records), "skipped": 0, "shards": [str(p) for p in written]})
    else:
        print(f"imported {len(records)} record(s) into {len(written)} shard(s) of the user table")
        for p in written:
            print(f"  {p}")
    return 0
