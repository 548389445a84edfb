"""kforge issue: kernel requests filed as GitHub issues (the "Kernel request" form).

    kforge issue parse --body-file body.md          # the validated request, or every problem
    kforge issue parse --body-file body.md --json   # {"valid", "request", "problems"}
    kforge issue run --repo OWNER/NAME --issue 42 --comment --pr --provider anthropic
    kforge issue run --body-file body.md --out out/ && kforge issue publish --dir out/ --repo O/N --issue 42 --comment --pr

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
    run = commands.add_parser("run", help="generate kernels for a request and report (comment, pull request)",
                              description=_run.__doc__)
    run.add_argument("--body-file", metavar="FILE", help="the issue body (- for stdin); without it the body is "
                     "read through the GitHub API from --repo and --issue")
    run.add_argument("--repo", metavar="OWNER/NAME", help="the issue's repository (GITHUB_TOKEN, GITHUB_API_URL)")
    run.add_argument("--issue", type=int, metavar="N", help="the issue number")
    run.add_argument("--comment", action="store_true", help="post the report (or the problems) on the issue")
    run.add_argument("--pr", action="store_true", help="open a pull request with the kernels, records and report")
    run.add_argument("--out", default=None, metavar="DIR", help="where the report and plot go (default ./kforge-issue-report)")
    run.add_argument("--rounds", type=int, default=2)
    run.add_argument("--variants", type=int, default=4)
    run.add_argument("--top-k", type=int, default=2)
    run.add_argument("--max-seconds", type=float, default=None, help="time budget of the generation")
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    run.add_argument("--executor", default="local", help="local (a worker per GPU) or ray")
    from kforge.cli._args import add_sandbox_argument

    add_sandbox_argument(run)
    run.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    from kforge.gen.config import add_provider_arguments

    add_provider_arguments(run)
    run.set_defaults(issue_run=_run)
    post = commands.add_parser("publish", help="post what `issue run --out DIR` wrote (from a runner without the "
                               "issue's code)", description=_publish.__doc__)
    what = post.add_mutually_exclusive_group(required=True)
    what.add_argument("--dir", metavar="DIR", help="the output directory of `kforge issue run --out DIR`")
    what.add_argument("--problems", metavar="FILE", help="the problems `kforge issue parse` printed, to post")
    post.add_argument("--repo", required=True, metavar="OWNER/NAME")
    post.add_argument("--issue", required=True, type=int, metavar="N")
    post.add_argument("--comment", action="store_true", help="post the report (or the problems) on the issue")
    post.add_argument("--pr", action="store_true", help="open a pull request with the kernels, records and report")
    post.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    post.set_defaults(issue_run=_publish)


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


def _run(args) -> int:
    """Generate kernels for the request of an issue and write the report (markdown and a plot);
    --comment posts it on the issue (or, for an invalid request, the list of problems), --pr opens
    a pull request with the accepted kernels, their table records and the report. Exit 1 when
    the request is invalid."""
    import os
    from pathlib import Path

    from kforge.cli import _args
    from kforge.cli._output import progress
    from kforge.gen import search
    from kforge.gen.config import config_from_args
    from kforge.gen.providers import make_provider
    from kforge.issues import publish
    from kforge.issues.github import GitHub
    from kforge.issues.run import run_request

    repo = args.repo
    if (args.comment or args.pr or not args.body_file) and (repo is None or args.issue is None):
        raise KforgeError("--comment, --pr and reading the body from GitHub need the issue: --repo OWNER/NAME "
                          "and --issue N")
    gh = GitHub() if repo else None
    body = read_body(args.body_file) if args.body_file else gh.issue(repo, args.issue).body
    request, problems = parse_request(body)
    if request is None:
        text = problems_markdown(problems)
        if args.comment:
            gh.comment(repo, args.issue, "kforge could not run this request:\n\n" + text)
        if getattr(args, "json", False):
            emit_json({"valid": False, "problems": [p.to_json() for p in problems]})
        else:
            print(text, end="")
        return 1
    device = _args.device(args.device)
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    provider = make_provider(config_from_args(args))
    settings = search.Settings(rounds=args.rounds, variants=args.variants, top_k=args.top_k,
                               max_seconds=args.max_seconds)
    out = Path(args.out or "kforge-issue-report")
    executor = _args.executor(args.executor)
    try:
        outcome = run_request(request, provider, settings, device=device, executor=executor, out_dir=out,
                              on_progress=progress)
    finally:
        executor.close()
        provider.close()
    publish.save(outcome, out)
    links = _post(gh, repo, args.issue, out, args.comment, args.pr)
    if getattr(args, "json", False):
        emit_json({"valid": True, **outcome.to_json(), "report": str(out / "report.md"), **links})
    else:
        print(outcome.markdown, end="")
        for what, url in links.items():
            print(f"{what}: {url or 'none (no kernel was accepted)'}", file=sys.stderr)
    return 0


def _post(gh, repo: str | None, number: int | None, out, comment: bool, pr: bool) -> dict:
    from kforge.issues import publish

    links = {}
    if comment or pr:
        published = publish.load(out)
        if comment:
            links["comment"] = publish.comment(gh, repo, number, published)
        if pr:
            links["pull_request"] = publish.pull_request(gh, repo, number, published)
    return links


def _publish(args) -> int:
    """Post the outcome `kforge issue run --out DIR` wrote (its report as a comment, its kernels
    and records as a pull request), or a problems list: for a job on a clean runner that holds the
    GitHub token while the runner that ran the issue's code holds none. The directory is checked
    as untrusted data (op name, kernel hashes against their sources, records, sizes)."""
    from pathlib import Path

    from kforge.issues.github import GitHub

    gh = GitHub()
    if args.problems:
        text = read_body(args.problems)
        links = {"comment": gh.comment(args.repo, args.issue, "kforge could not run this request:\n\n" + text)
                 if args.comment else None}
    else:
        links = _post(gh, args.repo, args.issue, Path(args.dir), args.comment, args.pr)
    if getattr(args, "json", False):
        emit_json(links)
    else:
        for what, url in links.items():
            print(f"{what}: {url or 'none (no kernel was accepted)'}")
    return 0
