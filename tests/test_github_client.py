"""kforge.issues.github against the loopback fake of GitHub's REST API (tests/github_fake.py).

What the issue workflow does (read the issue, comment, branch, commit two files, open a pull
request, idempotently), and how it fails: every error names what went wrong and never the token;
anything invalid is refused before a request leaves the process.
"""
from __future__ import annotations

import base64
import socket

import pytest
from github_fake import TOKEN, GitHubFake, blob_sha

from kforge.errors import KforgeError
from kforge.issues.github import GitHub, GitHubError, Issue

REPO = "octo/kernels"
WRONG_TOKEN = "ghp_WRONGwrongWRONG0000000000000000000"


def test_reading_an_issue(github_fake):
    body = "### Op\r\n\r\nrms_norm\r\n\r\n### Notes\r\n\r\n_No response_"
    number = github_fake.add_issue(REPO, "Faster rms_norm on H100", body, labels=("kernel-request", "perf"),
                                   author="alice", association="CONTRIBUTOR")
    issue = GitHub().issue(REPO, number)
    assert issue == Issue(number=1, title="Faster rms_norm on H100", body=body, labels=("kernel-request", "perf"),
                          author="alice", author_association="CONTRIBUTOR", state="open",
                          url="https://github.com/octo/kernels/issues/1")
    (request,) = github_fake.requests
    assert (request.method, request.path, request.json) == ("GET", "/repos/octo/kernels/issues/1", None)
    assert request.auth == f"Bearer {TOKEN}"
    assert request.headers["accept"] == "application/vnd.github+json"
    assert request.headers["x-github-api-version"] == "2022-11-28"
    assert request.headers["user-agent"].startswith("kforge/")


def test_an_empty_body_reads_as_empty_text_and_reads_need_no_token(github_fake, monkeypatch):
    monkeypatch.delenv("GITHUB_TOKEN")
    github_fake.add_issue(REPO, "no body", None, number=12, state="closed")
    issue = GitHub().issue(REPO, 12)
    assert (issue.number, issue.body, issue.labels, issue.state) == (12, "", (), "closed")
    assert github_fake.requests[-1].auth is None


def test_a_pull_request_is_not_read_as_an_issue(github_fake):
    number = github_fake.add_issue(REPO, "a PR", "diff", pull_request=True)
    with pytest.raises(GitHubError, match="is a pull request, not an issue"):
        GitHub().issue(REPO, number)


def test_posting_a_comment(github_fake):
    number = github_fake.add_issue(REPO)
    report = "## kforge report\n\n| shape | speedup |\n|---|---|\n| 4096x4096 | 1.8x |\n"
    url = GitHub().comment(REPO, number, report)
    assert url.startswith(f"https://github.com/{REPO}/issues/{number}#issuecomment-")
    assert github_fake.state[REPO].comments == {number: [report]}
    request = github_fake.requests[-1]
    assert (request.method, request.path, request.json) == ("POST", f"/repos/{REPO}/issues/{number}/comments",
                                                            {"body": report})
    assert request.headers["content-type"] == "application/json"


def test_branch_two_files_and_a_pull_request_opened_once(github_fake):
    repo = github_fake.add_repo(REPO, default_branch="trunk", files={"kforge/tables/h100.json": b'{"old": 1}\n'})
    gh = GitHub()
    base = gh.default_branch(REPO)
    assert base == "trunk"
    tip = gh.branch_sha(REPO, base)
    assert tip == repo.refs["trunk"]

    gh.create_branch(REPO, "kforge/issue-7", tip)
    assert repo.refs["kforge/issue-7"] == tip
    assert github_fake.requests[-1].json == {"ref": "refs/heads/kforge/issue-7", "sha": tip}

    kernel = b"import triton\n\n@triton.jit\ndef rms_norm_kernel(x): pass\n"
    first = gh.put_file(REPO, "kforge/issue-7", "kforge/tables/kernels/rms_norm/abc.py", kernel, "kforge: add kernel")
    new_put = github_fake.requests[-1]
    assert new_put.method == "PUT" and "sha" not in new_put.json
    assert base64.b64decode(new_put.json["content"]) == kernel and new_put.json["branch"] == "kforge/issue-7"

    table = b'{"new": 2}\n'
    second = gh.put_file(REPO, "kforge/issue-7", "kforge/tables/h100.json", table, "kforge: table records")
    update = github_fake.requests[-1]
    assert update.json["sha"] == blob_sha(b'{"old": 1}\n')  # the update names the blob it replaces
    assert first != second and repo.refs["kforge/issue-7"] == second
    assert repo.files("kforge/issue-7") == {"kforge/tables/h100.json": table,
                                            "kforge/tables/kernels/rms_norm/abc.py": kernel}
    assert repo.files("trunk") == {"kforge/tables/h100.json": b'{"old": 1}\n'}  # the base is untouched

    url = gh.pull_request(REPO, "kforge/issue-7", base, "kforge: rms_norm kernels (#7)", "Closes #7")
    assert url == f"https://github.com/{REPO}/pull/1"
    (pull,) = repo.pulls
    assert (pull["head"]["label"], pull["base"]["ref"], pull["body"]) == ("octo:kforge/issue-7", "trunk", "Closes #7")

    assert gh.pull_request(REPO, "kforge/issue-7", base, "again", "again") == url
    assert len(repo.pulls) == 1
    assert [r.method for r in github_fake.requests if r.path == f"/repos/{REPO}/pulls"] == ["GET", "POST", "GET"]


def test_a_pull_request_opened_by_someone_else_meanwhile_is_returned(github_fake):
    repo = github_fake.add_repo(REPO)
    gh = GitHub()
    gh.create_branch(REPO, "feature", repo.refs["main"])
    first = gh.pull_request(REPO, "feature", "main", "t", "")
    github_fake.respond_next(200, [])  # the look-up misses it: the POST gets 422, then it is found
    assert gh.pull_request(REPO, "octo:feature", "main", "t", "") == first
    assert [r.method for r in github_fake.requests[-3:]] == ["GET", "POST", "GET"]


def test_an_existing_branch(github_fake):
    repo = github_fake.add_repo(REPO)
    gh = GitHub()
    tip = repo.refs["main"]
    gh.create_branch(REPO, "kforge/x", tip)
    with pytest.raises(GitHubError, match="'kforge/x' already exists"):
        gh.create_branch(REPO, "kforge/x", tip)
    gh.create_branch(REPO, "kforge/x", tip, exist_ok=True)  # same place: fine
    gh.put_file(REPO, "kforge/x", "a.txt", b"moved", "move the branch")
    with pytest.raises(GitHubError, match=f"already exists at {repo.refs['kforge/x']}, not at {tip}"):
        gh.create_branch(REPO, "kforge/x", tip, exist_ok=True)


def test_a_branch_from_an_unknown_commit_reports_githubs_422(github_fake):
    github_fake.add_repo(REPO)
    with pytest.raises(GitHubError, match="Object does not exist") as caught:
        GitHub().create_branch(REPO, "b", "f" * 40)
    assert caught.value.status == 422


def test_a_wrong_token_is_a_401_that_names_the_variable_not_the_token(github_fake):
    github_fake.add_issue(REPO)
    gh = GitHub(token=WRONG_TOKEN)
    with pytest.raises(GitHubError) as caught:
        gh.issue(REPO, 1)
    error = caught.value
    assert (error.status, error.method, error.path) == (401, "GET", "/repos/octo/kernels/issues/1")
    assert "GITHUB_TOKEN" in str(error) and "Bad credentials" in str(error)
    assert isinstance(error, KforgeError)
    for text in (str(error), repr(error), repr(error.args), repr(gh), repr(vars(error))):
        assert WRONG_TOKEN not in text
    assert github_fake.requests[-1].auth == f"Bearer {WRONG_TOKEN}"  # it was sent, and refused


def test_a_token_echoed_in_an_error_page_is_scrubbed(github_fake):
    github_fake.respond_next(502, f"<html>proxy error for Bearer {TOKEN}</html>".encode())
    with pytest.raises(GitHubError) as caught:
        GitHub().default_branch(REPO)
    assert caught.value.status == 502 and "proxy error" in str(caught.value) and TOKEN not in str(caught.value)


@pytest.mark.parametrize("call", [lambda gh: gh.issue("octo/nope", 1), lambda gh: gh.issue(REPO, 99),
                                  lambda gh: gh.branch_sha(REPO, "no-such-branch")])
def test_not_found(github_fake, call):
    github_fake.add_issue(REPO)
    with pytest.raises(GitHubError, match=r"not found \(or no access\): Not Found") as caught:
        call(GitHub())
    assert caught.value.status == 404


def test_a_rate_limit_says_until_when(github_fake):
    github_fake.respond_next(403, {"message": "API rate limit exceeded for installation ID 1."},
                             {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1767225600"})
    with pytest.raises(GitHubError, match="rate limited until 2026-01-01 00:00:00 UTC: API rate limit exceeded") as c:
        GitHub().issue(REPO, 1)
    assert c.value.status == 403 and "check GITHUB_TOKEN" not in str(c.value)

    github_fake.respond_next(429, {"message": "You have exceeded a secondary rate limit."}, {"retry-after": "60"})
    with pytest.raises(GitHubError, match=r"rate limited \(retry after 60 s\)") as c:
        GitHub().issue(REPO, 1)
    assert c.value.status == 429


def test_a_plain_403_is_about_permissions(github_fake):
    github_fake.respond_next(403, {"message": "Resource not accessible by integration"},
                             {"x-ratelimit-remaining": "4999"})
    with pytest.raises(GitHubError, match="forbidden: check GITHUB_TOKEN .*Resource not accessible by integration"):
        GitHub().comment(REPO, 1, "hi")


def test_githubs_validation_details_are_passed_on(github_fake):
    github_fake.respond_next(422, {"message": "Validation Failed", "errors": [{"message": "body is too long"}]})
    with pytest.raises(GitHubError, match="request failed: Validation Failed; body is too long"):
        GitHub().comment(REPO, 1, "hi")


BAD_CALLS = {
    "repo: traversal": ("repo", lambda gh: gh.issue("../..", 1)),
    "repo: no owner": ("repo", lambda gh: gh.issue("kernels", 1)),
    "repo: extra part": ("repo", lambda gh: gh.default_branch("octo/kernels/issues")),
    "repo: query": ("repo", lambda gh: gh.issue("octo/kernels?x=1", 1)),
    "repo: newline": ("repo", lambda gh: gh.comment("octo/kernels\n", 1, "hi")),
    "number: zero": ("number", lambda gh: gh.issue(REPO, 0)),
    "number: string": ("number", lambda gh: gh.issue(REPO, "1")),
    "number: bool": ("number", lambda gh: gh.comment(REPO, True, "hi")),
    "branch: dotdot": ("branch", lambda gh: gh.branch_sha(REPO, "a/../b")),
    "branch: space": ("name", lambda gh: gh.create_branch(REPO, "a b", "a" * 40)),
    "branch: shell": ("name", lambda gh: gh.create_branch(REPO, "x;rm -rf ~", "a" * 40)),
    "branch: option": ("branch", lambda gh: gh.put_file(REPO, "-f", "a.py", b"", "m")),
    "branch: lock": ("branch", lambda gh: gh.branch_sha(REPO, "kforge/x.lock")),
    "branch: leading slash": ("base", lambda gh: gh.pull_request(REPO, "h", "/main", "t", "")),
    "branch: control": ("head", lambda gh: gh.pull_request(REPO, "h\x1b[0m", "main", "t", "")),
    "branch: reflog": ("head", lambda gh: gh.pull_request(REPO, "main@{1}", "main", "t", "")),
    "head: bad owner": ("head", lambda gh: gh.pull_request(REPO, "a/b:h", "main", "t", "")),
    "sha: short": ("from_sha", lambda gh: gh.create_branch(REPO, "b", "abc123")),
    "path: traversal": ("path", lambda gh: gh.put_file(REPO, "main", "kforge/../../etc/passwd", b"", "m")),
    "path: absolute": ("path", lambda gh: gh.put_file(REPO, "main", "/etc/passwd", b"", "m")),
    "path: git dir": ("path", lambda gh: gh.put_file(REPO, "main", ".git/hooks/post-checkout", b"", "m")),
    "path: backslash": ("path", lambda gh: gh.put_file(REPO, "main", "a\\b.py", b"", "m")),
    "path: control": ("path", lambda gh: gh.put_file(REPO, "main", "a\nb.py", b"", "m")),
    "path: bidi": ("path", lambda gh: gh.put_file(REPO, "main", "a\u202eyp.exe", b"", "m")),
    "content: text": ("content", lambda gh: gh.put_file(REPO, "main", "a.py", "text", "m")),
    "comment: empty": ("body", lambda gh: gh.comment(REPO, 1, "  ")),
    "comment: too long": ("body", lambda gh: gh.comment(REPO, 1, "x" * 65537)),
    "title: two lines": ("title", lambda gh: gh.pull_request(REPO, "h", "main", "t\nx", "")),
}


@pytest.mark.parametrize("case", BAD_CALLS, ids=list(BAD_CALLS))
def test_invalid_arguments_are_refused_before_any_request(github_fake, case):
    argument, call = BAD_CALLS[case]
    with pytest.raises(GitHubError, match=f"argument '{argument}'") as caught:
        call(GitHub())
    assert caught.value.argument == argument and caught.value.status is None
    assert github_fake.requests == []


@pytest.mark.parametrize("write", [
    lambda gh: gh.comment(REPO, 1, "hi"),
    lambda gh: gh.create_branch(REPO, "b", "a" * 40),
    lambda gh: gh.put_file(REPO, "main", "a.py", b"x", "m"),
    lambda gh: gh.pull_request(REPO, "b", "main", "t", ""),
])
def test_a_write_without_a_token_says_to_set_github_token(github_fake, monkeypatch, write):
    monkeypatch.delenv("GITHUB_TOKEN")
    with pytest.raises(GitHubError, match="a token is needed to .*: set GITHUB_TOKEN") as caught:
        write(GitHub())
    assert caught.value.argument == "token"
    assert github_fake.requests == []


def test_network_errors_are_wrapped(github_fake):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(GitHubError, match="network error reaching http://127.0.0.1:") as caught:
        GitHub(api_url=f"http://127.0.0.1:{port}").issue(REPO, 1)
    assert (caught.value.status, caught.value.method) == (None, "GET")

    github_fake.respond_next(200, {"default_branch": "main"}, delay_s=0.5)
    with pytest.raises(GitHubError, match="network error.*timed out"):
        GitHub(timeout_s=0.1).default_branch(REPO)


def test_an_answer_that_is_not_json_or_lacks_a_field(github_fake):
    github_fake.respond_next(200, b"<html>captive portal</html>")
    with pytest.raises(GitHubError, match="not JSON: '<html>captive portal</html>'"):
        GitHub().default_branch(REPO)
    github_fake.respond_next(200, {"name": "kernels"})
    with pytest.raises(GitHubError, match="no field 'default_branch'"):
        GitHub().default_branch(REPO)


def test_a_redirect_to_another_host_is_refused_and_the_token_stays_home(github_fake):
    elsewhere = GitHubFake(token="other")
    try:
        github_fake.respond_next(301, {}, {"Location": f"{elsewhere.url}/repos/{REPO}"})
        with pytest.raises(GitHubError, match="refused a redirect to another host"):
            GitHub().default_branch(REPO)
        assert elsewhere.requests == []
    finally:
        elsewhere.close()


def test_a_same_host_redirect_is_followed(github_fake):
    github_fake.add_repo("octo/renamed", default_branch="dev")
    github_fake.respond_next(301, {}, {"Location": f"{github_fake.url}/repos/octo/renamed"})
    assert GitHub().default_branch("octo/old-name") == "dev"
    assert github_fake.requests[-1].auth == f"Bearer {TOKEN}"


def test_configuration(github_fake, monkeypatch):
    assert GitHub().api_url == github_fake.url  # from GITHUB_API_URL
    monkeypatch.delenv("GITHUB_API_URL")
    assert GitHub().api_url == "https://api.github.com"
    assert repr(GitHub(token=WRONG_TOKEN)) == "GitHub(api_url='https://api.github.com', token=set)"
    with pytest.raises(GitHubError, match="must use https"):
        GitHub(api_url="http://github.example.com/api/v3")
    with pytest.raises(GitHubError, match="whitespace or control characters") as caught:
        GitHub(token="abc\r\nX-Evil: 1")
    assert "abc" not in str(caught.value)
