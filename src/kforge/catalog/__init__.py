"""The embedded kernel catalog: seed kernels shipped with kforge, one candidate file each.

Each file here follows the candidate contract (`kforge.candidate`): `forward` with its op's
signature, the `@triton.jit` kernels it launches, a `DOMAIN`, and its tunables as module-level
constants, each one `NAME = literal` line, listed with their choices in a module-level
`SEARCH_SPACE = {"NAME": [value, ...]}` literal: what the catalog provider
(`kforge.gen.providers.catalog`) may rewrite. A shipped value should be written as `repr` writes
it, so that a mutant set back to it is the shipped file byte for byte. They are data, not modules
of kforge: nothing imports them; they are loaded by path, stored, evaluated and routed like any
generated kernel. Which op a file seeds is its spec's to say (`OpSpec.seed_kernels`): this
package keeps no table of its own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from kforge.specs import OpSpec

CATALOG_DIR = Path(__file__).resolve().parent


def seeds(spec: OpSpec) -> list[Path]:
    """The seed kernel files of `spec`, as its `seed_kernels` names them (best general-purpose
    first; empty for an op the catalog has none for, e.g. a user's)."""
    return [CATALOG_DIR / name for name in spec.seed_kernels]


def all_seeds(specs: Iterable[OpSpec]) -> dict[str, list[Path]]:
    """op -> its seed files, for the ops of `specs` that have seeds (`kforge.ops.SPECS.values()`:
    every registered op's)."""
    return {spec.name: seeds(spec) for spec in specs if spec.seed_kernels}


def files() -> list[Path]:
    """Every kernel file in the catalog directory, whichever spec names it."""
    return sorted(p for p in CATALOG_DIR.glob("*.py") if p.name != "__init__.py")
