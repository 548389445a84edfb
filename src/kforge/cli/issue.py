"""kforge issue: kernel requests filed as GitHub issues (the "Kernel request" form).

    kforge issue parse --body-file body.md          # the validated request, or every problem
    kforge issue parse --body-file body.md --json   # {"valid", "request", "problems"}

`parse` exits 0 when the body is a valid request and 1 when it is not; its problems come out as
one markdown list, ready to post back on the issue. The body is untrusted text: only the parsed,
validated fields leave the parser, as data.
"""
from __future__ import annotations

import argparse
import sys

from kforge.cli._output import emit_json, render
from kforge.errors import KforgeError
from kforge.issues.parse import MAX_BODY_CHARS, parse_request
from kforge.issues.request import problems_markdown

HELP = "kernel requests filed as GitHub issues: parse (and validate) an issue body"


def add_arguments(parser) -> None:
    commands = parser.add_subparsers(dest="issue_command", metavar="SUBCOMMAND", required=True)
    parse = commands.add_parser("parse", help="the validated request of an issue body, or every problem",
                                description=_parse.__doc__)
    parse.add_argument("--body-file", required=True, metavar="FILE",
                       help="the issue body as GitHub renders the form (- for stdin)")
    # SUPPRESS: `kforge issue --json parse` and `kforge issue parse --json` both work (a False
    # default here would overwrite the first).
    parse.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="machine-readable output on stdout")
    parse.set_defaults(issue_run=_parse)
    # -- `kforge issue run` goes here (the lead adds it): --body-file FILE | --repo OWNER/NAME
    #    --issue N, --comment, --pr; register it as `parse` is above, with set_defaults(issue_run=...).


def run(args) -> int:
    return args.issue_run(args)


def read_body(path: str) -> str:
    """The body text of `path` (- for stdin); undecodable bytes are replaced, never trusted."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(4 * MAX_BODY_CHARS + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(4 * MAX_BODY_CHARS + 1)
    except OSError as exc:
        raise KforgeError(f"cannot read --body-file {path}: {exc.strerror or exc}") from None
    if len(data) > 4 * MAX_BODY_CHARS:
        raise KforgeError(f"--body-file {path}: larger than an issue body can be ({MAX_BODY_CHARS} characters)")
    return data.decode("utf-8", errors="replace")


def _parse(args) -> int:
    """Read an issue body rendered from the Kernel request form and validate it: exit 0 with the
    request (a table, or JSON), or exit 1 with every problem (markdown, or JSON)."""
    request, problems = parse_request(read_body(args.body_file))
    if args.json:
        emit_json({"valid": request is not None, "request": request.to_json() if request else None,
                   "problems": [p.to_json() for p in problems]})
        return 0 if request is not None else 1
    if request is None:
        print(problems_markdown(problems), end="")
        return 1
    for p in problems:  # warnings only: the request stands
        print(f"warning: {p.message}", file=sys.stderr)
    rows = [["op", f"{request.op} ({'new' if request.new_op else 'existing'})"],
            ["reference", f"{len(request.reference.splitlines())} lines" if request.reference else "-"],
            ["shapes", ", ".join("x".join(map(str, s)) for s in request.shapes)],
            ["dtypes", ", ".join(request.dtypes)], ["gpu", request.gpu.value], ["goal", request.goal.value],
            ["tolerance", "-" if request.tolerance is None else f"{request.tolerance:g}"],
            ["notes", f"{len(request.notes)} characters" if request.notes else "-"]]
    print(render(["field", "value"], rows))
    return 0
