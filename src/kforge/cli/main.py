"""`kforge` entry point: builds the argparse tree from the subcommand modules and runs one.

Each subcommand module has `HELP`, `add_arguments(parser)` and `run(args) -> int`; `--json` is
added here for all of them, so every command has it.
"""
from __future__ import annotations

import argparse
import sys

from kforge import __version__
from kforge.cli import attempts, demo, doctor, evaluate, generate, issue, misses, table, tune
from kforge.errors import KforgeError
from kforge.redact import redact

COMMANDS = {"doctor": doctor, "table": table, "misses": misses, "demo": demo, "evaluate": evaluate, "tune": tune,
            "bench": tune, "generate": generate, "attempts": attempts, "issue": issue}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kforge", description="kforge: every op call routed to the fastest verified implementation.")
    parser.add_argument("--version", action="version", version=f"kforge {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        alias = name != module.__name__.rsplit(".", 1)[-1]  # bench: tune's older name
        sub = commands.add_parser(name, help=f"the same as {module.__name__.rsplit('.', 1)[-1]}" if alias else module.HELP,
                                  description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "unsafe_no_sandbox", False):
        from kforge.evaluate.isolation import allow_unsafe

        allow_unsafe()  # workers started from here on may run untrusted code without bwrap
    try:
        return int(args.run(args) or 0)
    except KforgeError as exc:
        print(redact(f"kforge {args.command}: {exc}"), file=sys.stderr)
        return 1
    except BrokenPipeError:  # `kforge table | head`
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
