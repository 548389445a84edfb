"""kforge issue: kernel requests filed as GitHub issues (the "Kernel request" form).

    kforge issue parse --body-file body.md          # the validated request, or every problem
    kforge issue parse --body-file body.md --json   # {"valid", "request", "problems"}
    kforge issue run --repo OWNER/NAME --issue 42 --comment --pr --provider anthropic
    kforge issue run --body-file body.md --out out/ &&
      kforge issue publish --dir out/ --repo O/N --issue 42 --comment --pr

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
from kforge.redact import redact, redact_data

HELP = "kernel requests filed as GitHub issues: parse one, run it (generate, report), publish the answer"


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
    parse.add_argument("--markdown", action="store_true",
                       help="print the comment to post: the body's hash and the approval that runs it, or the problems")
    parse.add_argument("--approval", metavar="COMMENT", help="also check a maintainer's `/kforge <hash>` comment "
                       "against the body (exit 1 when it approves another version of it)")
    parse.set_defaults(issue_run=_parse)
    run = commands.add_parser("run", help="generate kernels for a request and report (comment, pull request)",
                              description=_run.__doc__)
    run.add_argument("--body-file", metavar="FILE", help="the issue body (- for stdin); without it the body is "
                     "read through the GitHub API from --repo and --issue")
    run.add_argument("--repo", metavar="OWNER/NAME", help="the issue's repository (GITHUB_TOKEN, GITHUB_API_URL)")
    run.add_argument("--issue", type=int, metavar="N", help="the issue number")
    run.add_argument("--comment", action="store_true", help="post the report (or the problems) on the issue")
    run.add_argument("--pr", action="store_true", help="open a pull request with the kernels, records and report")
    approve = run.add_mutually_exclusive_group()
    approve.add_argument("--approval", metavar="COMMENT", help="run only if this maintainer comment, `/kforge "
                         "<hash>`, names the hash of the body being run (`kforge issue parse` shows it)")
    approve.add_argument("--expect-hash", metavar="HASH", help="run only if the body's sha256 starts with HASH "
                         "(12 hex digits or more)")
    run.add_argument("--out", default=None, metavar="DIR", help="where the report and plot go (default ./kforge-issue-report)")
    run.add_argument("--rounds", type=int, default=2, help="rounds of variants (default: %(default)s)")
    run.add_argument("--variants", type=int, default=4, help="variants per round (default: %(default)s)")
    run.add_argument("--top-k", type=int, default=2, help="lineages kept between rounds (default: %(default)s)")
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
    what.add_argument("--message", metavar="FILE", help="a comment `kforge issue parse --markdown` wrote, to post "
                      "as it is")
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
    request (a table, or JSON) and the body's hash, the approval `/kforge <hash>` that runs it; or
    exit 1 with every problem (markdown, or JSON). --approval: exit 1 too when that comment does
    not approve this very body."""
    from kforge.issues import approval

    body = read_body(args.body_file)
    request, problems = parse_request(body)
    digest = approval.body_hash(body)
    refused = None
    if getattr(args, "approval", None) is not None:
        try:
            approval.check(body, comment=args.approval)
        except approval.ApprovalError as exc:
            refused = str(exc)
    if getattr(args, "json", False):
        emit_json(redact_data({"valid": request is not None, "request": request.to_json() if request else None,
                               "problems": [p.to_json() for p in problems], "body_sha256": approval.body_sha256(body),
                               "approval": approval.approval_command(body), "approved": None if
                               getattr(args, "approval", None) is None else refused is None, "refused": refused}))
        return 0 if request is not None and refused is None else 1
    if request is None or refused is not None:
        text = problems_markdown(problems) if request is None else ""
        if refused is not None:
            text += ("\n" if text else "") + f"**The run was not started**: {refused}.\n"
        print(redact(text + f"\nBody `{digest}` (sha256 prefix).\n"), end="")
        return 1
    if getattr(args, "markdown", False):
        print(redact(acknowledgement(digest, problems)), end="")
        return 0
    for p in problems:  # warnings only: the request stands
        print(redact(f"warning: {p.message}"), file=sys.stderr)
    rows = [["op", f"{request.op} ({'new' if request.new_op else 'existing'})"],
            ["reference", f"{len(request.reference.splitlines())} lines" if request.reference else "-"],
            ["shapes", ", ".join("x".join(map(str, s)) for s in request.shapes)],
            ["dtypes", ", ".join(request.dtypes)], ["gpu", request.gpu.value], ["goal", request.goal.value],
            ["tolerance", "-" if request.tolerance is None else f"{request.tolerance:g}"],
            ["notes", f"{len(request.notes)} characters" if request.notes else "-"],
            ["body", f"{digest} (approve with: /kforge {digest})"]]
    print(redact(render(["field", "value"], rows)))
    return 0


def acknowledgement(digest: str, problems) -> str:
    """The comment posted on a valid request: its hash, and the approval that runs exactly it."""
    text = (f"The kernel request is valid (body `{digest}`). A maintainer who has read it starts the run by "
            f"commenting:\n\n    /kforge {digest}\n\nEditing the body changes its hash: an edited request needs a "
            "new approval.\n")
    if problems:
        text += "\n" + problems_markdown(problems).split("\n", 1)[1].lstrip("\n")
    return text


def _run(args) -> int:
    """Generate kernels for the request of an issue and write the report (markdown and a plot);
    --comment posts it on the issue (or, for an invalid request, the list of problems), --pr opens
    a pull request with the accepted kernels, their table records and the report. Exit 1 when
    the request is invalid."""
    import os
    from pathlib import Path

    from kforge.cli import _args
    from kforge.cli._output import wrapped_progress
    from kforge.gen import run_state
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
    if getattr(args, "approval", None) is not None or getattr(args, "expect_hash", None) is not None:
        from kforge.issues import approval

        try:
            approval.check(body, comment=args.approval, expected=args.expect_hash)
        except approval.ApprovalError as exc:
            if args.comment:
                gh.comment(repo, args.issue, redact(f"kforge did not start the run: {exc}.\n"))
            raise
    request, problems = parse_request(body)
    if request is None:
        text = problems_markdown(problems)
        if args.comment:
            gh.comment(repo, args.issue, redact("kforge could not run this request:\n\n" + text))
        if getattr(args, "json", False):
            emit_json({"valid": False, "problems": [p.to_json() for p in problems]})
        else:
            print(redact(text), end="")
        return 1
    device = _args.device(args.device)
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    provider = make_provider(config_from_args(args))
    settings = run_state.Settings(rounds=args.rounds, variants=args.variants, top_k=args.top_k,
                                  max_seconds=args.max_seconds)
    out = Path(args.out or "kforge-issue-report")
    executor = _args.executor(args.executor)
    try:
        outcome = run_request(request, provider, settings, device=device, executor=executor, out_dir=out,
                              on_progress=wrapped_progress)
    except KforgeError as exc:  # the new op did not build: its reason (redacted) goes where a report would
        text = redact(f"kforge could not run this request: {exc}\n")
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(text)
        if args.comment:
            gh.comment(repo, args.issue, text)
        raise
    finally:
        executor.close()
        provider.close()
    publish.save(outcome, out)
    links = _post(gh, repo, args.issue, out, args.comment, args.pr)
    if getattr(args, "json", False):
        emit_json({"valid": True, **outcome.to_json(), "report": str(out / "report.md"), **links})
    else:
        print(redact(outcome.markdown), end="")
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
    if args.problems or args.message:
        text = read_body(args.problems or args.message)
        if args.problems:
            text = "kforge could not run this request:\n\n" + text
        links = {"comment": gh.comment(args.repo, args.issue, redact(text)) if args.comment else None}
    else:
        links = _post(gh, args.repo, args.issue, Path(args.dir), args.comment, args.pr)
    if getattr(args, "json", False):
        emit_json(links)
    else:
        for what, url in links.items():
            print(f"{what}: {url or 'none (no kernel was accepted)'}")
    return 0
