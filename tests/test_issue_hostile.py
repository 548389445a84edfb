"""Hostile issues (issue 14, class 8): bodies built to stall the parser, approvals of a body the
maintainer did not read, secrets in what `kforge issue` prints and posts, and a new op's reference
that tries to reach out of its sandboxed worker."""
from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path

import pytest

from kforge.issues.form import BY_LABEL
from kforge.issues.parse import parse_body, parse_request, parse_sections, split_sections

HERE = Path(__file__).resolve().parent
BODIES = HERE / "issues"
MB = 1 << 20


def fill(unit: str, size: int = MB) -> str:
    return (unit * (size // len(unit) + 1))[:size]


# -- the parser is linear -------------------------------------------------------------------------
HOSTILE_BODIES = {  # 1 MB each; the old fence scan was quadratic: 54 KB of fences took 13.7 s
    "repeated fences": fill("```\ncode\n"),
    "fences that close only themselves": fill("````\nx\n````\n"),
    "closings before headings, none long enough": "`````\n" + fill("```\n### Op\n"),
    "unclosed fences": fill("````python\n"),
    "one long line": "### Op\n\n" + "x" * MB,
    "a heading of spaces": "### " + " " * MB + "x",
    "many form headings": fill("### Op\n\nrms_norm\n"),
    "many unknown headings": fill("### Whatever\n"),
    "blank lines": "\n" * MB,
    "tilde fences": fill("~~~\n~~~~\n"),
    "CR line ends": fill("```\r### Shapes\r"),
}
BOUND_S = 3.0  # measured 0.1-0.5 s each on a loaded 2-core machine: generous, so never flaky


@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
def test_a_megabyte_of_any_hostile_pattern_parses_in_time(name):
    text = HOSTILE_BODIES[name]
    start = time.process_time()
    parse_sections(text)
    assert time.process_time() - start < BOUND_S
    start = time.process_time()  # parse_request refuses what GitHub could not hold, at once
    request, problems = parse_request(text)
    assert time.process_time() - start < 0.5 and request is None


def test_hostile_notes_change_nothing_but_the_notes():
    """The last field (Notes) takes the rest of the body: fences and headings there change nothing else."""
    base = (BODIES / "existing_op.md").read_text()
    text = base.rstrip("\n").rsplit("### Notes", 1)[0] + "### Notes\n\n" + fill("```\n### Op\n", 9_000)
    start = time.process_time()
    request, problems = parse_request(text)
    assert time.process_time() - start < BOUND_S
    expected, _ = parse_request(base)
    assert request is not None and (request.op, request.shapes, request.dtypes) == \
        (expected.op, expected.shapes, expected.dtypes)


def old_sections(text: str) -> dict:
    """The parser as it was (quadratic, right): the oracle for the linear one on small bodies."""
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    fence_open = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")

    def heading(line):
        m = re.fullmatch(r"### (.*?)\s*", line)
        return m.group(1) if m else None

    def closes(line, fence):
        s = line.strip()
        return len(line) - len(line.lstrip(" ")) <= 3 and len(s) >= len(fence) and set(s) == {fence[0]}

    def fence_end(start, fence):
        first = None
        for j in range(start + 1, len(lines)):
            if not closes(lines[j], fence):
                continue
            first = j if first is None else first
            k = j + 1
            while k < len(lines) and not lines[k].strip():
                k += 1
            if k == len(lines) or heading(lines[k]) in BY_LABEL:
                return j
        return first if first is not None else len(lines) - 1

    sections, i = [(None, [])], 0
    while i < len(lines):
        label, body = sections[-1]
        if label == "Notes":
            body.extend(lines[i:])
            break
        m = fence_open.fullmatch(lines[i])
        if m and not (m.group(1)[0] == "`" and "`" in m.group(2)):
            end = fence_end(i, m.group(1))
            body.extend(lines[i:end + 1])
            i = end + 1
            continue
        h = heading(lines[i])
        if h is not None:
            sections.append((h, []))
        else:
            body.append(lines[i])
        i += 1
    return [(label, "\n".join(body).strip()) for label, body in sections]


PIECES = ["```", "````", "~~~", "   ```", "    ```", "```python", "``` x `", "### Op", "### Shapes",
          "### Notes", "### Other", "###  Op ", "", " ", "rms_norm", "4096x4096", "\t```", "``` ", "~~~~~"]


def test_the_linear_parser_splits_every_small_body_as_the_old_one_did():
    rng = random.Random(14)
    for _ in range(3000):
        text = "\n".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 25)))
        assert split_sections(text) == old_sections(text), text


def test_parse_body_still_reads_the_fixtures():
    assert parse_body((BODIES / "existing_op.md").read_text())["Op"] == "rms_norm"


# -- a new op's reference that reaches out of its worker (class 8), and secrets ------------------------
SECRETS = {"ANTHROPIC_API_KEY": "sk-ant-fake-0123456789-anthropic-secret",
           "OPENAI_API_KEY": "sk-fake-0123456789-openai-secret"}


@pytest.fixture(scope="module")
def escaping_request(tmp_path_factory):
    """One run for the tests below (a kforge process and a worker: ~10 s)."""
    from github_fake import GitHubFake

    fake = GitHubFake()
    try:
        yield run_escaping_request(tmp_path_factory.mktemp("escape"), fake)
    finally:
        fake.close()


def run_escaping_request(tmp_path, github_fake) -> tuple[dict, dict, list[Path]]:
    """`kforge issue run` as the workflow runs it, in a process whose environment holds the API
    keys and a GitHub token from its start (so /proc/<pid>/environ holds them): the issue's
    reference runs `id`, lists $HOME, reads every readable /proc/*/environ and its own environment,
    writes outside its scratch dir, and raises with all it found. Its message reaches stderr, the
    report and the comment. Returns (outputs by place, the secrets, paths it must not have written)."""
    import subprocess
    import sys

    secrets = {**SECRETS, "GITHUB_TOKEN": github_fake.token}
    home, marker = tmp_path / "home", tmp_path / "owned-by-the-test" / "marker.txt"
    home.mkdir()
    (home / "private-file-of-the-runner-user").write_text("x")
    marker.parent.mkdir()
    op = f"escape_{os.getpid()}"
    body = (HERE / "adversarial" / "file_issue_escapes.md").read_text()
    body = body.replace("escape_@SUFFIX@", op).replace("@MARKER@", str(marker))
    github_fake.add_repo("octo/kernels")
    number = github_fake.add_issue("octo/kernels", "Kernel request", body)
    body_file, out = tmp_path / "body.md", tmp_path / "out"
    body_file.write_text(body)
    env = {k: v for k, v in os.environ.items() if k not in ("KFORGE_TABLE", "KFORGE_PIN")}
    env.update(secrets, HOME=str(home), GITHUB_API_URL=github_fake.url, KFORGE_HOME=str(tmp_path / "kforge-home"))
    proc = subprocess.run([sys.executable, "-m", "kforge", "issue", "run", "--body-file", str(body_file),
                           "--provider", "catalog", "--device", "cpu", "--out", str(out), "--repo", "octo/kernels",
                           "--issue", str(number), "--comment"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    report = (out / "report.md").read_text()
    (comment,) = github_fake.state["octo/kernels"].comments[number]
    outputs = {"stdout": proc.stdout, "stderr": proc.stderr, "report": report, "comment": comment}
    assert proc.returncode == 1 and "escaped: uid=" in proc.stderr, proc.stderr[-3000:]  # it did run, and raised
    assert "kforge could not run this request" in report and "escaped: uid=" in comment
    return outputs, secrets, [marker, home / "kforge-escape-marker"]


def test_an_escaping_reference_leaks_no_secret_value(escaping_request):
    """No secret value in stdout, stderr, the report or the posted comment: the worker's own
    environment holds none (the sandbox's deny-list), and what it read of its parent's is redacted."""
    outputs, secrets, _ = escaping_request
    proc_stderr = outputs["stderr"]
    for where, text in outputs.items():
        for name, value in secrets.items():
            assert value not in text, f"{name} in {where}"
    assert "own environment:" in proc_stderr and "_API_KEY" not in proc_stderr.split("own environment:")[1]


def test_an_escaping_reference_cannot_read_the_parent_or_write_outside(escaping_request):
    """What only isolation gives: a secret encoded past redaction (reversed) never leaves, because
    the worker cannot read its parent's environment; $HOME is not there to list; the marker path
    the test owns is not writable from the worker."""
    outputs, secrets, outside = escaping_request
    assert [p for p in outside if p.exists()] == []  # nothing written outside the scratch dir
    for where, text in outputs.items():
        for name, value in secrets.items():
            assert value[::-1] not in text, f"{name}, reversed, in {where}"
        assert "private-file-of-the-runner-user" not in text, f"$HOME listed in {where}"


def test_publish_redacts_what_it_posts(tmp_path, github_fake, monkeypatch):
    """The directory `issue run` wrote came from a runner where untrusted code ran: a report that
    carries a secret value of the posting runner is posted redacted, with the secret nowhere."""
    import json

    from kforge.cli.main import main

    monkeypatch.setenv("OPENAI_API_KEY", SECRETS["OPENAI_API_KEY"])
    github_fake.add_repo("octo/kernels")
    number = github_fake.add_issue("octo/kernels", "Kernel request", "body")
    out = tmp_path / "out"
    out.mkdir()
    leak = f"key {SECRETS['OPENAI_API_KEY']} token {github_fake.token}"
    (out / "outcome.json").write_text(json.dumps({"request": {"op": "rms_norm"}, "markdown": leak}))
    (out / "records.json").write_text(json.dumps({"schema_version": 1, "records": []}))
    assert main(["issue", "publish", "--dir", str(out), "--repo", "octo/kernels", "--issue", str(number),
                 "--comment"]) == 0
    (comment,) = github_fake.state["octo/kernels"].comments[number]
    assert SECRETS["OPENAI_API_KEY"] not in comment and github_fake.token not in comment
    assert "[redacted OPENAI_API_KEY]" in comment and "[redacted GITHUB_TOKEN]" in comment
    message = tmp_path / "message.md"
    message.write_text(leak)
    assert main(["issue", "publish", "--message", str(message), "--repo", "octo/kernels", "--issue", str(number),
                 "--comment"]) == 0
    assert all(SECRETS["OPENAI_API_KEY"] not in c for c in github_fake.state["octo/kernels"].comments[number])
