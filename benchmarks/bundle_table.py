"""Copy a GPU run's score-table shards into the package's bundled table, with their kernels.

    python benchmarks/bundle_table.py RUN_DIR [RUN_DIR ...]

RUN_DIR holds `tables/<device slug>/<op>.json` (what benchmarks/gpu_catalog.sh archives) and,
optionally, `kernels/` (the run's kernel store). Each shard is merged into
src/kforge/tables/<device slug>/<op>.json: a record of the run replaces the bundled record of the
same (key, implementation); the others stay. Every Triton record's kernel is put into the bundled
kernel store (src/kforge/tables/kernels/, see kforge.paths.bundled_kernel_dir and
kforge.store.BundledKernels) from the run's store, or from the catalog seed with the same sha256;
a catalog seed is bundled by reference (metadata naming its file in src/kforge/catalog/), any other
kernel as a copy. A record whose kernel is found in neither is dropped and named, so the bundled
table never points at a kernel it does not ship.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from kforge import paths
from kforge.catalog import all_seeds
from kforge.ops import SPECS
from kforge.records import Record
from kforge.router.table import parse_table, shard_payload
from kforge.store import BundledKernels, KernelStore, sha256_of


def _kernel_source(sha: str, run_dirs: list[Path]) -> tuple[str, str, str | None] | None:
    """(source, op, provider) of kernel `sha` from a run's store or the catalog, or None."""
    for run in run_dirs:
        store = KernelStore(run / "kernels")
        if store.source_path(sha).exists():
            kernel = store.get(sha)
            return kernel.source(), kernel.op, kernel.provider
    for op, files in all_seeds(SPECS.values()).items():
        for path in files:
            if sha256_of(path.read_bytes()) == sha:
                return path.read_text(), op, "catalog"
    return None


def _compact(payload: dict) -> str:
    """The shard as JSON with one record (and one pooled evidence) per line: readable diffs, and
    none of the one-number-per-line bulk that made the gemv shard 13.6 MB."""
    head = {k: v for k, v in payload.items() if k not in ("records", "evidence_pool")}
    parts = [json.dumps(head, sort_keys=True)[:-1]]
    for name in ("evidence_pool", "records"):
        lines = [json.dumps(r, sort_keys=True, separators=(",", ":")) for r in payload[name]]
        parts.append(f'"{name}": [\n' + ",\n".join(lines) + "\n]")
    return ", ".join(parts) + "}\n"


def bundle(run_dirs: list[Path]) -> int:
    target = paths.BUNDLED_TABLE_DIR
    bundled_store = BundledKernels(target / "kernels")
    dropped = []
    for run in run_dirs:
        for shard in sorted((run / "tables").glob("*/*.json")):
            records, skipped = parse_table(shard.read_text(), str(shard))
            kept: list[Record] = []
            for r in records:
                if r.impl.startswith("triton:"):
                    found = _kernel_source(r.source_sha256, run_dirs)
                    if found is None:
                        dropped.append(f"{r.key.op} {r.key.shape} {r.impl}: kernel not found")
                        continue
                    source, op, provider = found
                    bundled_store.put(source, op=op, provider=provider)
                kept.append(r)
            out = target / shard.parent.name / shard.name
            merged: dict = {}
            if out.exists():
                merged = {r.ident: r for r in parse_table(out.read_text(), str(out))[0]}
            merged.update({r.ident: r for r in kept})
            data = json.loads(shard.read_text())
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(_compact(shard_payload(data.get("device"), data.get("op"), merged.values())))
            print(f"{out.relative_to(target.parent)}: {len(kept)} records from {shard} ({skipped} unreadable)")
    for line in dropped:
        print(f"dropped {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(bundle([Path(a) for a in sys.argv[1:]]))
