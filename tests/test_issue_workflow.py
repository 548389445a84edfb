"""`.github/workflows/kforge-request.yml`: who can start a run, what each job may do, and how the
untrusted issue body reaches it.

Two jobs: `generate` runs the issue's reference code on the self-hosted GPU runner, with no write
permission and no GITHUB_TOKEN (its sandboxed workers can read their parents' environment through
/proc/<ppid>/environ and write the runner's file system); `publish` holds the write permissions on
a fresh GitHub-hosted runner, never sees the issue body and runs none of its code.

The jobs' `if:` are evaluated here on event payloads by a small evaluator of GitHub's expression
syntax (the operators and functions the workflow uses), so the maintainer gate is tested by what
it lets through, not by how it reads.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")  # PyYAML comes with the test extra (ray requires it)

WORKFLOW = Path(__file__).resolve().parent.parent / ".github" / "workflows" / "kforge-request.yml"
MAINTAINERS = ("OWNER", "MEMBER", "COLLABORATOR")
WRITE = {"write"}


def load() -> dict:
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def jobs() -> dict:
    return load()["jobs"]


def self_hosted(job: dict) -> bool:
    runs_on = job["runs-on"]
    return "self-hosted" in (runs_on if isinstance(runs_on, list) else [runs_on])


def generate() -> dict:
    """The job that runs the issue's code: the one on the self-hosted runner."""
    (only,) = [j for j in jobs().values() if self_hosted(j)]
    return only


def publish() -> dict:
    """The job that posts what `generate` made: the one that writes contents."""
    (only,) = [j for j in jobs().values() if (j.get("permissions") or {}).get("contents") == "write"]
    return only


def acknowledge() -> dict:
    """The job that answers a filed or edited request with its hash (or its problems)."""
    return jobs()["acknowledge"]


def steps() -> list[dict]:
    return [s for j in jobs().values() for s in j["steps"]]


def step(job: dict, name: str) -> dict:
    (only,) = [s for s in job["steps"] if s.get("name") == name]
    return only


def one_line(script: str) -> str:
    return " ".join(script.split())


# -- `${{ }}` inside run scripts: a line-based check (no YAML needed) --------------------------------
def run_scripts(text: str) -> list[str]:
    """The text of every `run:` value in a workflow: the line itself and, for a block scalar, the
    lines indented deeper than the key."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        m = re.match(r"(\s*)(- )?run:(.*)", line)
        if not m:
            continue
        indent = len(m.group(1)) + (2 if m.group(2) else 0)
        block = [m.group(3)]
        for following in lines[i + 1:]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            block.append(following)
        out.append("\n".join(block))
    return out


def test_no_expression_inside_a_run_script():
    scripts = run_scripts(WORKFLOW.read_text())
    assert len(jobs()) == 3
    assert len(scripts) == len([s for s in steps() if "run" in s]) >= 6
    assert [s for s in scripts if "${{" in s] == []
    assert all("${{" not in s["run"] for s in steps() if "run" in s)


def test_the_run_script_check_finds_expressions():
    bad = ("steps:\n  - name: x\n    run: echo ok\n"
           "  - run: |\n      echo fine\n      echo \"${{ github.event.issue.title }}\"\n"
           "    env:\n      A: ${{ github.event.issue.body }}\n  - run: >-\n      kforge ${{ inputs.x }}\n")
    assert [("${{" in s) for s in run_scripts(bad)] == [False, True, True]


def test_the_issue_body_reaches_the_generate_job_only_through_a_file():
    text = WORKFLOW.read_text()
    assert text.count("github.event.issue.body") == 2 and "github.event.issue.title" not in text
    writers = [s for s in steps() if "ISSUE_BODY" in s.get("env", {})]
    assert len(writers) == 2 and writers[0] in acknowledge()["steps"] and writers[1] in generate()["steps"]
    assert writers[0] == writers[1]
    writer = writers[1]
    assert writer["env"] == {"ISSUE_BODY": "${{ github.event.issue.body }}"}
    assert writer["run"] == "printf '%s' \"$ISSUE_BODY\" > \"$RUNNER_TEMP/kforge-issue-body.md\""
    runs = [one_line(s["run"]) for s in generate()["steps"] if "run" in s]
    assert 'kforge issue parse --body-file "$RUNNER_TEMP/kforge-issue-body.md" --approval "$APPROVAL_COMMENT" > ' \
           '"$RUNNER_TEMP/kforge-problems/problems.md"' in " ".join(runs)
    assert 'kforge issue parse --body-file "$RUNNER_TEMP/kforge-issue-body.md" > ' \
           '"$RUNNER_TEMP/kforge-problems/problems.md"' in " ".join(runs)
    # No --repo, --issue, --comment or --pr: generating writes nowhere but its output directory.
    generating = one_line(step(generate(), "Generate and report")["run"])
    assert 'kforge issue run --body-file "$RUNNER_TEMP/kforge-issue-body.md" --out "$RUNNER_TEMP/kforge-out" ' \
           '--approval "$APPROVAL_COMMENT"' in generating


def test_the_output_and_the_problems_travel_as_one_artifact_named_after_the_issue():
    uploads = [s for s in generate()["steps"] if s.get("uses", "").startswith("actions/upload-artifact@v4")]
    (download,) = [s for s in publish()["steps"] if s.get("uses", "").startswith("actions/download-artifact@v4")]
    name = "kforge-request-${{ github.event.issue.number }}"
    assert [u["with"]["name"] for u in uploads] == [name, name] and download["with"]["name"] == name
    assert [u["with"]["path"] for u in uploads] == ["${{ runner.temp }}/kforge-out",
                                                    "${{ runner.temp }}/kforge-problems/problems.md"]
    assert [u.get("if") for u in uploads] == [None, "failure() && steps.parse.outcome == 'failure'"]
    assert all(u["with"]["if-no-files-found"] == "error" for u in uploads)
    assert download["with"]["path"] == "${{ runner.temp }}/kforge-out"
    # The problems are uploaded only when parsing failed, not when generating did.
    upload_problems = uploads[1]["if"]
    assert job_runs(upload_problems, {"steps": {"parse": {"outcome": "failure"}}}, failed=True) is True
    assert job_runs(upload_problems, {"steps": {"parse": {"outcome": "success"}}}, failed=True) is False
    assert job_runs(upload_problems, {"steps": {"parse": {"outcome": "success"}}}) is False


def test_publish_posts_the_report_and_pull_request_or_the_problems():
    (script,) = [s["run"] for s in publish()["steps"] if "kforge issue publish" in s.get("run", "")]
    lines = [one_line(line) for line in script.splitlines() if line.strip()]
    assert lines == [
        'if [ -f "$RUNNER_TEMP/kforge-out/problems.md" ]; then',
        'kforge issue publish --problems "$RUNNER_TEMP/kforge-out/problems.md" --repo "$GITHUB_REPOSITORY" '
        '--issue "$ISSUE_NUMBER" --comment',
        'else',
        'kforge issue publish --dir "$RUNNER_TEMP/kforge-out" --repo "$GITHUB_REPOSITORY" --issue "$ISSUE_NUMBER" '
        '--comment --pr',
        'fi']
    assert publish()["env"] == {"ISSUE_NUMBER": "${{ github.event.issue.number }}"}


def test_permissions_are_minimal_and_the_tokens_go_only_where_they_are_used():
    assert load()["permissions"] == {}
    assert generate()["permissions"] == {"contents": "read"}
    assert publish()["permissions"] == {"contents": "write", "pull-requests": "write", "issues": "write"}
    assert acknowledge()["permissions"] == {"issues": "write"}
    for job, expected in ((acknowledge(), {"Post the request's hash, or its problems": {"GITHUB_TOKEN"}}),
                          (generate(), {"Generate and report": {"ANTHROPIC_API_KEY"}}),
                          (publish(), {"Post the report and open a pull request, or post the problems":
                                       {"GITHUB_TOKEN"}})):
        with_secret = {s["name"]: {k for k, v in s["env"].items() if "secrets." in str(v)}
                       for s in job["steps"] if any("secrets." in str(v) for v in s.get("env", {}).values())}
        assert with_secret == expected
        assert all("secrets." not in str(v) for v in job.get("env", {}).values())
        checkout = [s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout@")]
        assert checkout and checkout[0]["with"]["persist-credentials"] is False
    assert step(generate(), "Generate and report")["env"] == {"ANTHROPIC_API_KEY": "${{ secrets.ANTHROPIC_API_KEY }}",
                                                              "APPROVAL_COMMENT": "${{ github.event.comment.body }}"}
    assert step(publish(), "Post the report and open a pull request, or post the problems")["env"] == {
        "GITHUB_TOKEN": "${{ secrets.GITHUB_TOKEN }}"}


def test_no_github_token_and_no_write_on_the_runner_that_runs_the_issue_code():
    job = generate()
    assert any("kforge issue run" in s.get("run", "") for s in job["steps"])
    envs = [job.get("env", {})] + [s.get("env", {}) for s in job["steps"]]
    for env in envs:
        assert not {"GITHUB_TOKEN", "GH_TOKEN"} & set(env)
        assert all("GITHUB_TOKEN" not in str(v) and "github.token" not in str(v) for v in env.values())
    dumped = json.dumps(job)
    assert "GITHUB_TOKEN" not in dumped and "github.token" not in dumped and "token:" not in dumped
    assert set(job["permissions"].values()) <= {"read", "none"}
    # And no self-hosted job at all may write.
    for j in jobs().values():
        if self_hosted(j):
            assert not WRITE & set((j.get("permissions") or {}).values())


def test_the_writing_job_runs_on_a_fresh_runner_and_never_meets_the_issue():
    job = publish()
    assert isinstance(job["runs-on"], str) and job["runs-on"].startswith("ubuntu-")
    (generate_id,) = [k for k, j in jobs().items() if self_hosted(j)]
    assert job["needs"] in (generate_id, [generate_id])
    dumped = json.dumps(job)
    assert "kforge issue run" not in dumped and "kforge issue parse" not in dumped
    assert "github.event.issue.body" not in dumped and "ISSUE_BODY" not in dumped and "body-file" not in dumped
    # It installs kforge from its own checkout (the runner is fresh) and runs nothing else of the issue's.
    assert [one_line(s["run"]) for s in job["steps"] if "run" in s][0].endswith("python -m pip install -e .")


def test_triggers_runners_concurrency_and_timeouts():
    data = load()
    assert data["on"] == {"issues": {"types": ["opened", "edited", "labeled"]}, "issue_comment": {"types": ["created"]}}
    assert generate()["runs-on"] == ["self-hosted", "gpu"]
    assert publish()["runs-on"] == "ubuntu-latest"
    assert 0 < generate()["timeout-minutes"] <= 360 and 0 < publish()["timeout-minutes"] <= 60
    assert data["concurrency"]["group"] == "kforge-request-${{ github.event.issue.number }}"


# -- the maintainer gate, evaluated ----------------------------------------------------------------
_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<op>==|!=|&&|\|\||[!().,\[\]*])|(?P<name>[A-Za-z_][\w-]*))")


def tokens(expression: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    expression = expression.strip()
    while pos < len(expression):
        m = _TOKEN.match(expression, pos)
        assert m, f"cannot read the expression at {expression[pos:pos + 20]!r}"
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def evaluate(expression: str, context: dict, *, failed: bool = False):
    """GitHub's expression syntax, the part the workflow uses: property paths (with `.*.`),
    'strings', ==, !=, !, &&, ||, parentheses, contains, startsWith, fromJSON and the status
    functions always(), success(), failure() (`failed`: whether a step or needed job before failed).
    String comparisons ignore case, as GitHub's do."""
    toks = tokens(expression)
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else (None, None)

    def take(value=None):
        nonlocal pos
        tok = toks[pos]
        assert value is None or tok[1] == value, f"expected {value!r}, got {tok[1]!r}"
        pos += 1
        return tok

    def fold(v):
        return v.lower() if isinstance(v, str) else v

    def or_():
        value = and_()
        while peek()[1] == "||":
            take()
            right = and_()
            value = value or right
        return value

    def and_():
        value = unary()
        while peek()[1] == "&&":
            take()
            right = unary()
            value = value and right
        return value

    def unary():
        if peek()[1] == "!":
            take()
            return not unary()
        left = primary()
        if peek()[1] in ("==", "!="):
            op = take()[1]
            right = primary()
            return (fold(left) == fold(right)) == (op == "==")
        return left

    def primary():
        kind, value = take()
        if value == "(":
            inner = or_()
            take(")")
            return inner
        if kind == "str":
            return value[1:-1].replace("''", "'")
        if peek()[1] == "(":
            take("(")
            args = [] if peek()[1] == ")" else [or_()]
            while peek()[1] == ",":
                take()
                args.append(or_())
            take(")")
            return FUNCTIONS[value](*args)
        current = context.get(value)
        while peek()[1] == ".":
            take()
            key = take()[1]
            if key == "*":
                take(".")
                key = take()[1]
                current = [item.get(key) for item in current or []]
            else:
                current = current.get(key) if isinstance(current, dict) else None
        return current

    def contains(haystack, needle):
        if isinstance(haystack, list):
            return fold(needle) in [fold(h) for h in haystack]
        return fold(needle) in fold(haystack or "")

    FUNCTIONS = {"contains": contains, "fromJSON": json.loads,
                 "startsWith": lambda s, prefix: fold(s or "").startswith(fold(prefix)),
                 "always": lambda: True, "success": lambda: not failed, "failure": lambda: failed}
    result = or_()
    assert pos == len(toks), f"unread tokens {toks[pos:]}"
    return result


def event(name: str, *, association="NONE", labels=("kernel-request",), comment=None, label=None,
          pull_request=False) -> dict:
    issue = {"number": 7, "body": "### Op\n\nrms_norm", "author_association": association,
             "labels": [{"name": n} for n in labels]}
    if pull_request:
        issue["pull_request"] = {"url": "https://api.github.com/repos/o/r/pulls/7"}
    payload = {"issue": issue}
    if name == "issues":
        payload.update(action="labeled", label={"name": label})
    else:
        payload.update(action="created", comment={"body": comment[0], "author_association": comment[1]})
    return {"github": {"event_name": name, "event": payload}}


GATE = [
    ("a maintainer's issue labelled kernel-request",
     event("issues", association="MEMBER", label="kernel-request"), True),
    ("the owner's issue", event("issues", association="OWNER", label="kernel-request"), True),
    ("an outsider's issue: the form applies the label", event("issues", association="NONE", label="kernel-request"),
     False),
    ("a contributor's issue", event("issues", association="CONTRIBUTOR", label="kernel-request"), False),
    ("a maintainer's issue, another label", event("issues", association="MEMBER", label="bug"), False),
    ("/kforge from a collaborator", event("issue_comment", comment=("/kforge", "COLLABORATOR")), True),
    ("/kforge run from a member", event("issue_comment", comment=("/kforge run please", "MEMBER")), True),
    ("/kforge from the outsider author", event("issue_comment", comment=("/kforge", "NONE")), False),
    ("/kforge from an outsider on a maintainer's issue",
     event("issue_comment", association="OWNER", comment=("/kforge", "NONE")), False),
    ("/kforge from a first-time contributor", event("issue_comment", comment=("/kforge", "FIRST_TIME_CONTRIBUTOR")),
     False),
    ("a maintainer's comment not starting with /kforge", event("issue_comment", comment=("lgtm /kforge", "OWNER")),
     False),
    ("/kforge on an issue without the label", event("issue_comment", labels=("bug",), comment=("/kforge", "OWNER")),
     False),
    ("/kforge on a pull request", event("issue_comment", comment=("/kforge", "OWNER"), pull_request=True), False),
]


@pytest.mark.parametrize("what, context, runs", GATE, ids=[g[0] for g in GATE])
def test_only_maintainers_start_a_run(what, context, runs):
    assert bool(job_runs(generate()["if"], context)) is runs
    # `publish` runs on the same payloads, whether `generate` succeeded or failed (an invalid
    # request's problems are posted by it); never on a payload the gate refuses.
    assert bool(job_runs(publish()["if"], context)) is runs
    assert bool(job_runs(publish()["if"], context, failed=True)) is runs


def job_runs(condition: str, context: dict, *, failed: bool = False):
    """A job's `if:` as GitHub applies it: without a status function it means `success() && (...)`."""
    if not re.search(r"\b(always|success|failure|cancelled)\s*\(", condition):
        condition = f"success() && ({condition})"
    return evaluate(condition, context, failed=failed)


def test_a_condition_without_status_function_needs_success():
    ctx = {"github": {"a": "x"}}
    assert job_runs("github.a == 'x'", ctx) is True and job_runs("github.a == 'x'", ctx, failed=True) is False
    assert job_runs("always() && github.a == 'x'", ctx, failed=True) is True


def test_the_evaluator_reads_the_syntax_it_claims():
    ctx = {"github": {"a": "X", "l": [{"n": "p"}, {"n": "q"}]}}
    assert evaluate("github.a == 'x' && !(github.b == 'x')", ctx) is True
    assert evaluate("contains(github.l.*.n, 'Q') || false_name", ctx) is True
    assert evaluate("contains(fromJSON('[\"A\"]'), github.missing) || startsWith(github.a, 'y')", ctx) is False
    assert evaluate("always() && (failure() || github.a == 'y')", ctx, failed=True) is True
    assert evaluate("always() && (failure() || github.a == 'y')", ctx) is False
    assert evaluate("success() && github.a == 'x'", ctx) is True


# -- approval tied to the body ------------------------------------------------------------------------
def issue_event(action: str, association: str = "NONE", labels=("kernel-request",)) -> dict:
    issue = {"number": 7, "body": "### Op\n\nrms_norm", "author_association": association,
             "labels": [{"name": n} for n in labels]}
    return {"github": {"event_name": "issues", "event": {"action": action, "issue": issue}}}


@pytest.mark.parametrize("action", ["opened", "edited"])
@pytest.mark.parametrize("association", ["NONE", "OWNER"])
def test_a_filed_or_edited_request_is_acknowledged_with_its_hash_and_never_run(action, association):
    context = issue_event(action, association)
    assert job_runs(acknowledge()["if"], context) is True
    assert not job_runs(generate()["if"], context) and not job_runs(publish()["if"], context)
    assert not job_runs(acknowledge()["if"], issue_event(action, association, labels=("bug",)))
    assert not job_runs(acknowledge()["if"], event("issue_comment", comment=("/kforge", "OWNER")))
    assert not job_runs(acknowledge()["if"], event("issues", association="OWNER", label="kernel-request"))


def test_the_acknowledgement_parses_then_posts_and_runs_none_of_the_issue():
    job = acknowledge()
    assert job["runs-on"] == "ubuntu-latest" and not self_hosted(job)
    script = [one_line(line) for line in step(job, "Post the request's hash, or its problems")["run"].splitlines()]
    assert script == [
        'kforge issue parse --body-file "$RUNNER_TEMP/kforge-issue-body.md" --markdown > "$RUNNER_TEMP/kforge-parse.md" '
        '|| true',
        'kforge issue publish --message "$RUNNER_TEMP/kforge-parse.md" --repo "$GITHUB_REPOSITORY" --issue '
        '"$ISSUE_NUMBER" --comment']
    assert "kforge issue run" not in json.dumps(job)


BODY = Path(__file__).resolve().parent / "issues" / "existing_op.md"


def cli(capsys, *argv):
    from kforge.cli.main import main

    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def sha256_prefix(path: Path) -> str:
    """The approval hash by its definition: sha256 of the file's UTF-8 bytes, line ends as LF, 12 digits."""
    return hashlib.sha256(path.read_bytes().removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n")).hexdigest()[:12]


def test_parse_shows_the_hash_and_the_approval_that_runs_exactly_this_body(capsys, tmp_path):
    from kforge.issues.approval import body_hash

    digest = sha256_prefix(BODY)
    assert body_hash(BODY.read_text()) == digest and body_hash(BODY.read_text().replace("\n", "\r\n")) == digest
    rc, out, _ = cli(capsys, "issue", "parse", "--body-file", str(BODY), "--markdown")
    assert rc == 0 and f"    /kforge {digest}\n" in out and "edited request needs a new approval" in out
    rc, out, _ = cli(capsys, "issue", "parse", "--body-file", str(BODY), "--json")
    data = json.loads(out)
    assert data["body_sha256"].startswith(digest) and data["approval"] == f"/kforge {digest}"
    rc, out, _ = cli(capsys, "issue", "parse", "--body-file", str(BODY), "--approval", f"/kforge {digest}\nthanks")
    assert rc == 0
    edited = tmp_path / "edited.md"
    edited.write_text(BODY.read_text().replace("4096x4096", "8192x8192"))
    rc, out, _ = cli(capsys, "issue", "parse", "--body-file", str(edited), "--approval", f"/kforge {digest}")
    assert rc == 1 and f"the approval is for body {digest}, but the body is now {sha256_prefix(edited)}" in out


@pytest.mark.parametrize("comment, message", [
    ("/kforge", "names no body hash"),
    ("/kforge run please", "is not 12 to 64 hex digits"),
    ("/kforge 0123456789ab", "it was edited after the approval"),
    ("/kforge 01234", "is not 12 to 64 hex digits"),
    ("lgtm", "is not a `/kforge <hash>` comment"),
])
def test_issue_run_refuses_a_missing_or_stale_approval_before_anything_runs(comment, message, capsys, tmp_path,
                                                                            github_fake):
    github_fake.add_repo("octo/kernels")
    number = github_fake.add_issue("octo/kernels", "Kernel request", BODY.read_text())
    rc, out, err = cli(capsys, "issue", "run", "--body-file", str(BODY), "--approval", comment, "--provider", "catalog",
                       "--repo", "octo/kernels", "--issue", str(number), "--comment", "--out", str(tmp_path / "out"))
    assert rc == 1 and message in err and out == ""
    assert not (tmp_path / "out").exists()  # refused before parsing, generating or writing
    (posted,) = github_fake.state["octo/kernels"].comments[number]
    assert posted.startswith("kforge did not start the run:") and message in posted
    rc, _, err = cli(capsys, "issue", "run", "--body-file", str(BODY), "--expect-hash", "f" * 12, "--provider", "catalog")
    assert rc == 1 and "edited after the approval" in err
