"""Posting a request's outcome back: the report as an issue comment, and a pull request holding
the accepted kernels, their score-table records (a file `kforge table import` reads) and the
report with its plot. Branch names and paths are built from validated values only (the op name
passed the request's validation, the issue number is an int)."""
from __future__ import annotations

import json

from kforge.issues.github import GitHub
from kforge.issues.run import Outcome
from kforge.router.table import shard_payload
from kforge.store import KernelStore


def comment(gh: GitHub, repo: str, number: int, outcome: Outcome) -> str:
    """Post the report; returns the comment's URL."""
    return gh.comment(repo, number, outcome.markdown)


def branch_name(number: int, op: str) -> str:
    return f"kforge/issue-{int(number)}-{op}"


def pull_request(gh: GitHub, repo: str, number: int, outcome: Outcome) -> str | None:
    """Open (or update) the request's pull request; None when no kernel was accepted."""
    if not outcome.records:
        return None
    op = outcome.request.op
    base = gh.default_branch(repo)
    branch = branch_name(number, op)
    gh.create_branch(repo, branch, gh.branch_sha(repo, base), exist_ok=True)
    folder = f"kforge-requests/issue-{int(number)}"
    store = KernelStore()
    for record in outcome.records:
        sha = record.source_sha256
        source = store.source_path(sha).read_text()
        for suffix, data in ((".py", source.encode()), (".json", store.meta_path(sha).read_bytes())):
            gh.put_file(repo, branch, f"src/kforge/tables/kernels/{sha[:2]}/{sha}{suffix}", data,
                        f"kforge: {op} kernel {sha[:12]} (issue #{number})")
    table = shard_payload(None, op, outcome.records)
    gh.put_file(repo, branch, f"{folder}/records.json", (json.dumps(table, indent=1) + "\n").encode(),
                f"kforge: {op} score-table records (issue #{number})")
    report = outcome.markdown
    if outcome.plot is not None:
        gh.put_file(repo, branch, f"{folder}/{outcome.plot.name}", outcome.plot.read_bytes(),
                    f"kforge: {op} plot (issue #{number})")
        report += f"\n![{op}]({outcome.plot.name})\n"
    gh.put_file(repo, branch, f"{folder}/report.md", report.encode(), f"kforge: {op} report (issue #{number})")
    body = (f"Kernels generated for #{int(number)}: {len(outcome.records)} accepted record(s) of `{op}`.\n\n"
            f"Import the records with `kforge table import {folder}/records.json`.\n\n" + outcome.markdown)
    return gh.pull_request(repo, branch, base, f"kforge: kernels for {op} (issue #{int(number)})", body)
