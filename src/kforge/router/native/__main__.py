"""`python -m kforge.router.native build [--force]`: compile the native call key (scripts/setup.sh
runs it; a build already there for this Python, torch and source is kept unless --force). Exit 0
with the library's path; exit 1 with the compiler's message (kforge then uses its Python key)."""
from __future__ import annotations

import sys
import time

from kforge.router import native


def main(argv: list[str]) -> int:
    if argv[:1] != ["build"] or not set(argv[1:]) <= {"--verbose", "--force"}:
        print("usage: python -m kforge.router.native build [--force] [--verbose]", file=sys.stderr)
        return 2
    if "--force" not in argv and native.library_path().is_file():
        print(f"already built: {native.library_path()}")
        return 0
    t0 = time.perf_counter()
    try:
        path = native.build(verbose="--verbose" in argv)
    except RuntimeError as exc:
        print(f"kforge native key not built: {exc}\nkforge works without it (its Python key, ~1 us more per call)",
              file=sys.stderr)
        return 1
    print(f"built {path} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
