"""Posting a request's outcome back: the report as an issue comment, and a pull request holding
the accepted kernels, their score-table records (a file `kforge table import` reads) and the
report with its plot.

Everything is read from the directory `kforge issue run --out DIR` wrote (`save`), so posting can
happen in another job on a clean runner (`kforge issue publish --dir DIR`): the runner that ran
an issue's code holds no GitHub token. That directory came from a machine where untrusted code
ran, so it is data to check: the op name, the kernel hashes (64 hex digits, matching their
sources), the records (parsed as score-table records), sizes; branch names and paths are built
from checked values only.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from kforge.errors import KforgeError
from kforge.files import loads_json
from kforge.issues.github import GitHub
from kforge.redact import redact, redact_data
from kforge.userops.build import NAME
from kforge.router.table import parse_table, shard_payload
from kforge.store import KernelStore, catalog_seed

MAX_FILE_BYTES = 1 << 20
SHA = re.compile(r"[0-9a-f]{64}\Z")


class PublishError(KforgeError):
    """An output directory that cannot be published as it is."""


@dataclass
class Published:
    op: str
    markdown: str
    records: bytes  # a score-table file (JSON)
    kernels: dict[str, bytes]  # "<sha>.py" / "<sha>.json" -> content
    plot: tuple[str, bytes] | None


def save(outcome, out_dir: Path) -> None:
    """Write what publishing needs next to the report: outcome.json, records.json, kernels/."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = redact(outcome.markdown)
    (out_dir / "report.md").write_text(markdown)
    (out_dir / "outcome.json").write_text(json.dumps(redact_data({**outcome.to_json(), "markdown": markdown}), indent=1))
    (out_dir / "records.json").write_text(json.dumps(shard_payload(None, outcome.request.op, outcome.records),
                                                     indent=1) + "\n")
    store, kernels = KernelStore(), out_dir / "kernels"
    kernels.mkdir(exist_ok=True)
    for record in outcome.records:
        sha = record.source_sha256
        (kernels / f"{sha}.py").write_bytes(store.source_path(sha).read_bytes())
        (kernels / f"{sha}.json").write_bytes(store.meta_path(sha).read_bytes())


def _read(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise PublishError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise PublishError(f"cannot read {path}: {exc.strerror or exc}") from None


def load(out_dir: Path) -> Published:
    """The checked contents of an output directory of `kforge issue run`."""
    out_dir = Path(out_dir)
    try:
        outcome = loads_json(_read(out_dir / "outcome.json"), str(out_dir / "outcome.json"))
        op = outcome["request"]["op"]
        markdown = outcome["markdown"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PublishError(f"{out_dir}/outcome.json is not an outcome of kforge issue run ({exc})") from None
    if not isinstance(op, str) or not NAME.fullmatch(op):
        raise PublishError(f"{out_dir}: op name {op!r} is not a valid op name")
    if not isinstance(markdown, str) or len(markdown) > 60000:
        raise PublishError(f"{out_dir}: the report is not text of at most 60000 characters")
    records_bytes = _read(out_dir / "records.json")
    try:
        records, skipped = parse_table(records_bytes.decode("utf-8", errors="replace"), str(out_dir / "records.json"))
    except KforgeError as exc:
        raise PublishError(f"{out_dir}/records.json: {exc}") from None
    if skipped or any(r.key.op != op for r in records):
        raise PublishError(f"{out_dir}/records.json holds invalid records or records of another op")
    kernels: dict[str, bytes] = {}
    for record in records:
        sha = record.source_sha256 or ""
        if not SHA.match(sha):
            raise PublishError(f"{out_dir}/records.json: a record's source hash {sha!r} is not a sha256")
        source = _read(out_dir / "kernels" / f"{sha}.py")
        if hashlib.sha256(source).hexdigest() != sha:
            raise PublishError(f"{out_dir}/kernels/{sha}.py does not hash to its name")
        if redact(source.decode("utf-8", errors="replace")) != source.decode("utf-8", errors="replace"):
            raise PublishError(f"{out_dir}/kernels/{sha}.py holds a secret value of this runner: not published")
        kernels[f"{sha}.py"] = source
        meta = _read(out_dir / "kernels" / f"{sha}.json")
        try:
            loads_json(meta, str(out_dir / "kernels" / f"{sha}.json"))
        except ValueError:
            raise PublishError(f"{out_dir}/kernels/{sha}.json is not JSON") from None
        kernels[f"{sha}.json"] = meta
    plot_path = out_dir / f"{op}-speedup.png"
    plot = (plot_path.name, _read(plot_path)) if plot_path.is_file() else None
    return Published(op, markdown, records_bytes, kernels, plot)


def comment(gh: GitHub, repo: str, number: int, published: Published) -> str:
    """Post the report (redacted again: this runner's own secrets too); returns the comment's URL."""
    return gh.comment(repo, number, redact(published.markdown))


def branch_name(number: int, op: str) -> str:
    return f"kforge/issue-{int(number)}-{op}"


def pull_request(gh: GitHub, repo: str, number: int, published: Published) -> str | None:
    """Open (or update) the request's pull request; None when no kernel was accepted."""
    if not published.kernels:
        return None
    op, number = published.op, int(number)
    base = gh.default_branch(repo)
    branch = branch_name(number, op)
    gh.create_branch(repo, branch, gh.branch_sha(repo, base), exist_ok=True)
    folder = f"kforge-requests/issue-{number}"
    for name, content in sorted(published.kernels.items()):
        seed = catalog_seed(name[:64])
        if seed is not None and name.endswith(".py"):
            continue  # ships already as kforge/catalog/<seed>: the bundled metadata names it (no copy)
        if seed is not None:
            meta = loads_json(content, name)
            if not isinstance(meta, dict):
                raise PublishError(f"kernels/{name} is not a kernel's metadata (a JSON object)")
            content = (json.dumps({**meta, "catalog": seed}, indent=1, sort_keys=True) + "\n").encode()
        gh.put_file(repo, branch, f"src/kforge/tables/kernels/{name[:2]}/{name}", content,
                    f"kforge: {op} kernel {name[:12]} (issue #{number})")
    gh.put_file(repo, branch, f"{folder}/records.json", published.records,
                f"kforge: {op} score-table records (issue #{number})")
    report = redact(published.markdown)
    if published.plot is not None:
        gh.put_file(repo, branch, f"{folder}/{published.plot[0]}", published.plot[1], f"kforge: {op} plot (issue #{number})")
        report += f"\n![{op}]({published.plot[0]})\n"
    gh.put_file(repo, branch, f"{folder}/report.md", report.encode(), f"kforge: {op} report (issue #{number})")
    count = len(published.kernels) // 2
    body = (f"Kernels generated for #{number}: {count} kernel(s) of `{op}`.\n\n"
            f"Import the records with `kforge table import {folder}/records.json`.\n\n" + report)
    return gh.pull_request(repo, branch, base, f"kforge: kernels for {op} (issue #{number})", body)
