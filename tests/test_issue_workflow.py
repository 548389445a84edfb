"""`.github/workflows/kforge-request.yml`: who can start a run, what the job may do, and how the
untrusted issue body reaches it.

The job's `if:` is evaluated here on event payloads by a small evaluator of GitHub's expression
syntax (the operators and functions the workflow uses), so the maintainer gate is tested by what
it lets through, not by how it reads.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")  # PyYAML comes with the test extra (ray requires it)

WORKFLOW = Path(__file__).resolve().parent.parent / ".github" / "workflows" / "kforge-request.yml"
MAINTAINERS = ("OWNER", "MEMBER", "COLLABORATOR")


def load() -> dict:
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def job() -> dict:
    (only,) = load()["jobs"].values()
    return only


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
    assert len(scripts) == len([s for s in job()["steps"] if "run" in s]) >= 4
    assert [s for s in scripts if "${{" in s] == []
    assert all("${{" not in step["run"] for step in job()["steps"] if "run" in step)


def test_the_run_script_check_finds_expressions():
    bad = ("steps:\n  - name: x\n    run: echo ok\n"
           "  - run: |\n      echo fine\n      echo \"${{ github.event.issue.title }}\"\n"
           "    env:\n      A: ${{ github.event.issue.body }}\n  - run: >-\n      kforge ${{ inputs.x }}\n")
    assert [("${{" in s) for s in run_scripts(bad)] == [False, True, True]


def test_the_issue_body_reaches_the_job_only_through_a_file():
    text = WORKFLOW.read_text()
    assert text.count("github.event.issue.body") == 1 and "github.event.issue.title" not in text
    (writer,) = [s for s in job()["steps"] if "ISSUE_BODY" in s.get("env", {})]
    assert writer["env"] == {"ISSUE_BODY": "${{ github.event.issue.body }}"}
    assert writer["run"] == "printf '%s' \"$ISSUE_BODY\" > \"$RUNNER_TEMP/kforge-issue-body.md\""
    runs = [s["run"] for s in job()["steps"] if "run" in s]
    assert any(r.startswith("kforge issue parse --body-file \"$RUNNER_TEMP/kforge-issue-body.md\"") for r in runs)
    assert any(" ".join(r.split()) == 'kforge issue run --body-file "$RUNNER_TEMP/kforge-issue-body.md" --repo '
               '"$GITHUB_REPOSITORY" --issue "$ISSUE_NUMBER" --comment --pr' for r in runs)


def test_permissions_are_minimal_and_the_token_goes_only_where_it_is_used():
    data = load()
    assert data["permissions"] == {}
    assert job()["permissions"] == {"contents": "write", "pull-requests": "write", "issues": "write"}
    with_token = [s["name"] for s in job()["steps"]
                  if any("secrets." in str(v) for v in s.get("env", {}).values())]
    assert with_token == ["Post the problems", "Generate, report and open a pull request"]
    assert all("secrets." not in str(v) for v in job().get("env", {}).values())
    checkout = [s for s in job()["steps"] if s.get("uses", "").startswith("actions/checkout@")]
    assert checkout and checkout[0]["with"]["persist-credentials"] is False


def test_runner_concurrency_and_timeout():
    data, j = load(), job()
    assert data["on"] == {"issues": {"types": ["labeled"]}, "issue_comment": {"types": ["created"]}}
    assert j["runs-on"] == ["self-hosted", "gpu"]
    assert 0 < j["timeout-minutes"] <= 360
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


def evaluate(expression: str, context: dict):
    """GitHub's expression syntax, the part the workflow uses: property paths (with `.*.`),
    'strings', ==, !=, !, &&, ||, parentheses, contains, startsWith, fromJSON. String comparisons
    ignore case, as GitHub's do."""
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
            args = [or_()]
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
                 "startsWith": lambda s, prefix: fold(s or "").startswith(fold(prefix))}
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
    assert bool(evaluate(job()["if"], context)) is runs


def test_the_evaluator_reads_the_syntax_it_claims():
    ctx = {"github": {"a": "X", "l": [{"n": "p"}, {"n": "q"}]}}
    assert evaluate("github.a == 'x' && !(github.b == 'x')", ctx) is True
    assert evaluate("contains(github.l.*.n, 'Q') || false_name", ctx) is True
    assert evaluate("contains(fromJSON('[\"A\"]'), github.missing) || startsWith(github.a, 'y')", ctx) is False
