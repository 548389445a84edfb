"""Where kforge reads and writes on disk.

Everything kforge writes lives under one home: `KFORGE_HOME` when set (tests use it), otherwise the
platformdirs user data dir (`~/.local/share/kforge` on Linux). Read-only tables shipped with the
package live in `kforge/tables/` (`KFORGE_BUNDLED_TABLE` names another directory in its place, or
with the value `none` switches the shipped measurements off). `KFORGE_TABLE` names one extra table
file, read last (it wins).
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_TABLE_DIR = PACKAGE_DIR / "tables"


def home() -> Path:
    """The directory everything kforge writes goes under (not created here)."""
    env = os.environ.get("KFORGE_HOME")
    if env:
        return Path(env).expanduser()
    # Imported here: platformdirs is only needed when KFORGE_HOME is unset.
    import platformdirs

    return Path(platformdirs.user_data_dir("kforge", appauthor=False))


def bundled_table_dir() -> Path | None:
    """The read-only table layer shipped with kforge, or the directory KFORGE_BUNDLED_TABLE names;
    None when it is `none`."""
    env = os.environ.get("KFORGE_BUNDLED_TABLE")
    if env is None or env == "":
        return BUNDLED_TABLE_DIR
    return None if env.lower() == "none" else Path(env).expanduser()


def bundled_kernel_dir() -> Path | None:
    """The kernels the bundled table's Triton records name (a kernel store, read-only)."""
    tables = bundled_table_dir()
    return None if tables is None else tables / "kernels"


def user_table_dir() -> Path:
    return home() / "table"


def misses_dir() -> Path:
    return home() / "misses"


def extra_table_file() -> Path | None:
    env = os.environ.get("KFORGE_TABLE")
    return Path(env).expanduser() if env else None


def worker_cache_dir() -> Path:
    """Triton and Inductor caches shared by the sandboxed workers that run kforge's own code (the
    catalog's seeds): never mounted into a worker running anything else."""
    return home() / "cache" / "trusted-workers"
