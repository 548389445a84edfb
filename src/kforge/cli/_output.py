"""Output helpers shared by the subcommands: JSON to stdout, aligned tables, progress on stderr."""
from __future__ import annotations

import json
import sys
import textwrap
from typing import Any, Iterable, Sequence

from kforge.device import DeviceFingerprint
from kforge.redact import redact, redact_data

WIDTH = 100  # columns every command's text output fits (a table wider than this is a bug)

_SHORT_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64"}


def emit_json(payload: Any) -> None:
    """`payload` as JSON on stdout, every known secret value redacted (kforge.redact)."""
    json.dump(redact_data(json.loads(json.dumps(payload, default=str))), sys.stdout, indent=1)
    sys.stdout.write("\n")


def progress(message: str) -> None:
    print(redact(message), file=sys.stderr, flush=True)


def wrap(text: str, indent: str = "    ") -> str:
    """`text` with each line longer than WIDTH wrapped, its continuation lines indented by `indent`;
    shorter lines are kept as they are. A word longer than a line (a path, an id) is never split."""
    return "\n".join(line if len(line) <= WIDTH else
                     textwrap.fill(line, WIDTH, subsequent_indent=indent, break_long_words=False,
                                   break_on_hyphens=False) for line in text.split("\n"))


def wrapped_progress(message: str) -> None:
    """`progress` for the messages of a library loop (generate's search, tune) in a terminal."""
    progress(wrap(message))


def render(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Iterable[int] = ()) -> str:
    """A plain-text table: columns padded to their widest cell, `right` columns right-aligned."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    right = set(right)
    lines = []
    for n, row in enumerate(cells):
        line = "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
        lines.append(line.rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def dtypes_text(dtypes: str) -> str:
    """"bfloat16,bfloat16" -> "bf16"; mixed signatures keep every entry."""
    parts = [_SHORT_DTYPES.get(d, d) for d in dtypes.split(",")]
    return parts[0] if len(set(parts)) == 1 else ",".join(parts)


def device_text(device: str) -> str:
    """A fingerprint string shortened to "kind: name" for tables (JSON keeps it whole)."""
    try:
        fp = DeviceFingerprint.parse(device)
    except ValueError:
        return device
    return f"{fp.kind}: {fp.name}"


def number(value: float | None, digits: int = 1) -> str:
    """A number for a table: `digits` decimals below 1000, none from there (12345, not 12345.0)."""
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"
