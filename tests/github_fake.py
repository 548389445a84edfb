"""A loopback fake of the GitHub REST endpoints kforge uses, with state, for tests (no network).

Endpoints: GET /repos/O/R; GET /repos/O/R/issues/N; POST /repos/O/R/issues/N/comments;
GET /repos/O/R/git/ref/heads/BRANCH; POST /repos/O/R/git/refs; GET and PUT /repos/O/R/contents/PATH;
GET and POST /repos/O/R/pulls. Anything else answers 404 (and is recorded).

It behaves as GitHub does where kforge depends on it: a wrong token gets 401 (no token at all may
read, not write), an unknown repository, issue, branch or file 404, a branch that exists 422
"Reference already exists", an update without the file's blob sha 422 and with a stale one 409, a
second open pull request for the same head and base 422. Commits are snapshots: a branch is a ref
to a commit sha, a commit maps paths to bytes.

Use it through the fixture (conftest.py loads this module as a plugin; the environment then points
the client at it):

    def test_x(github_fake):
        github_fake.add_issue("octo/kernels", title="...", body="...")
        GitHub().issue("octo/kernels", 1)  # GITHUB_API_URL and GITHUB_TOKEN are set
        assert github_fake.requests[-1].path == "/repos/octo/kernels/issues/1"
"""
from __future__ import annotations

import base64
import hashlib
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

TOKEN = "ghp_fakeTokenForTests0123456789abcdefXYZ"


def blob_sha(content: bytes) -> str:
    """Git's blob id of `content`, as GitHub reports a file's sha."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Request:
    """One request the fake received. `json` is the decoded body (None without one), `query` the
    query string as {name: last value}, `auth` the Authorization header or None, `headers` all
    headers (names lower-cased)."""
    method: str
    path: str
    query: dict[str, str]
    json: Any
    auth: str | None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Canned:
    status: int
    body: Any
    headers: dict[str, str]
    delay_s: float


@dataclass
class FakeRepo:
    """One repository. `commits` maps a commit sha to its tree {path: bytes}; `refs` a branch name to
    a commit sha; `issues` a number to the issue JSON GitHub would send; `comments` a number to
    the comment bodies posted; `pulls` the pull requests, as JSON."""
    full_name: str
    default_branch: str = "main"
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    issues: dict[int, dict] = field(default_factory=dict)
    comments: dict[int, list[str]] = field(default_factory=dict)
    pulls: list[dict] = field(default_factory=list)

    def files(self, branch: str) -> dict[str, bytes]:
        """The tree at the tip of `branch`."""
        return self.commits[self.refs[branch]]


class GitHubFake:
    """The server and its state. `url` is the API root to give the client, `token` the one token it
    accepts, `state` {"owner/name": FakeRepo}, `requests` every request received, in order."""

    def __init__(self, token: str = TOKEN):
        self.token = token
        self.state: dict[str, FakeRepo] = {}
        self.requests: list[Request] = []
        self._canned: list[Canned] = []
        self._lock = threading.Lock()
        self._shas = (hashlib.sha1(b"fake commit %d" % i).hexdigest() for i in itertools.count())
        self._ids = itertools.count(1)
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # shutdown() waits for the loop to wake: with the default 0.5 s poll every test paid 0.5 s
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- set-up helpers -------------------------------------------------------------------------------
    def add_repo(self, full_name: str, default_branch: str = "main", files: dict[str, bytes] | None = None) -> FakeRepo:
        """A repository with one commit on its default branch (holding `files`); returned as is if it
        exists already."""
        with self._lock:
            if full_name not in self.state:
                repo = FakeRepo(full_name, default_branch)
                sha = next(self._shas)
                repo.commits[sha] = dict(files or {})
                repo.refs[default_branch] = sha
                self.state[full_name] = repo
            return self.state[full_name]

    def add_issue(self, full_name: str, title: str = "a kernel request", body: str | None = "", *,
                  number: int | None = None, labels: tuple[str, ...] = (), author: str = "octocat",
                  association: str = "NONE", state: str = "open", pull_request: bool = False) -> int:
        """Add an issue (the repository too, if new); returns its number."""
        repo = self.add_repo(full_name)
        with self._lock:
            number = number or max([0, *repo.issues, *(p["number"] for p in repo.pulls)]) + 1
            issue = {"number": number, "title": title, "body": body, "state": state,
                     "labels": [{"id": i, "name": name} for i, name in enumerate(labels)],
                     "user": {"login": author}, "author_association": association,
                     "html_url": f"https://github.com/{full_name}/issues/{number}"}
            if pull_request:
                issue["pull_request"] = {"url": f"{self.url}/repos/{full_name}/pulls/{number}"}
            repo.issues[number] = issue
            return number

    def respond_next(self, status: int, body: Any = None, headers: dict[str, str] | None = None,
                     delay_s: float = 0.0) -> None:
        """Answer the next request (whatever it is) with this, after `delay_s`, instead of serving it."""
        with self._lock:
            self._canned.append(Canned(status, body if body is not None else {}, dict(headers or {}), delay_s))

    # -- serving --------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str], body: Any, auth: str | None):
        """(status, json) for one request; runs under the lock."""
        if auth is not None and auth != f"Bearer {self.token}":
            return 401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}
        if method != "GET" and auth is None:
            return 401, {"message": "Requires authentication"}
        if method in ("POST", "PUT", "PATCH") and not isinstance(body, dict):
            return 400, {"message": "Problems parsing JSON"}
        parts = [unquote(p) for p in path.split("/")[1:]]
        if len(parts) < 3 or parts[0] != "repos" or f"{parts[1]}/{parts[2]}" not in self.state:
            return 404, {"message": "Not Found"}
        repo, rest = self.state[f"{parts[1]}/{parts[2]}"], parts[3:]
        route = (method, rest[0] if rest else "")
        if route == ("GET", ""):
            return 200, {"full_name": repo.full_name, "default_branch": repo.default_branch}
        if route[1] == "issues" and len(rest) >= 2 and rest[1].isdigit() and int(rest[1]) in repo.issues:
            number = int(rest[1])
            if method == "GET" and len(rest) == 2:
                return 200, repo.issues[number]
            if method == "POST" and rest[2:] == ["comments"]:
                if not isinstance(body, dict) or not body.get("body"):
                    return 422, {"message": "Validation Failed", "errors": [{"field": "body", "code": "missing_field"}]}
                repo.comments.setdefault(number, []).append(body["body"])
                cid = next(self._ids)
                return 201, {"id": cid, "body": body["body"],
                             "html_url": f"https://github.com/{repo.full_name}/issues/{number}#issuecomment-{cid}"}
        if route == ("GET", "git") and rest[1:3] == ["ref", "heads"]:
            branch = "/".join(rest[3:])
            if branch in repo.refs:
                return 200, {"ref": f"refs/heads/{branch}", "object": {"sha": repo.refs[branch], "type": "commit"}}
        if route == ("POST", "git") and rest[1:] == ["refs"]:
            return self._create_ref(repo, body)
        if route[1] == "contents" and len(rest) > 1:
            file_path = "/".join(rest[1:])
            if method == "GET":
                return self._get_file(repo, file_path, query.get("ref", repo.default_branch))
            if method == "PUT":
                return self._put_file(repo, file_path, body)
        if route == ("GET", "pulls") and len(rest) == 1:
            found = [p for p in repo.pulls if p["state"] == query.get("state", "open")
                     and ("head" not in query or p["head"]["label"] == query["head"])
                     and ("base" not in query or p["base"]["ref"] == query["base"])]
            return 200, found
        if route == ("POST", "pulls") and len(rest) == 1:
            return self._create_pull(repo, body)
        return 404, {"message": "Not Found"}

    def _create_ref(self, repo: FakeRepo, body: dict):
        ref, sha = body.get("ref", ""), body.get("sha", "")
        if not ref.startswith("refs/heads/") or sha not in repo.commits:
            return 422, {"message": "Object does not exist" if ref.startswith("refs/heads/") else "Invalid ref"}
        branch = ref[len("refs/heads/"):]
        if branch in repo.refs:
            return 422, {"message": "Reference already exists"}
        repo.refs[branch] = sha
        return 201, {"ref": ref, "object": {"sha": sha, "type": "commit"}}

    def _get_file(self, repo: FakeRepo, path: str, ref: str):
        if ref not in repo.refs:
            return 404, {"message": f"No commit found for the ref {ref}"}
        tree = repo.files(ref)
        if path in tree:
            content = tree[path]
            return 200, {"type": "file", "path": path, "sha": blob_sha(content), "size": len(content),
                         "encoding": "base64", "content": base64.b64encode(content).decode()}
        if any(p.startswith(path + "/") for p in tree):
            return 200, [{"type": "file", "path": p} for p in tree if p.startswith(path + "/")]
        return 404, {"message": "Not Found"}

    def _put_file(self, repo: FakeRepo, path: str, body: dict):
        branch = body.get("branch", repo.default_branch)
        if branch not in repo.refs:
            return 404, {"message": f"Branch {branch} not found"}
        if not body.get("message") or "content" not in body:
            return 422, {"message": "Invalid request.\n\n\"message\" and \"content\" are required."}
        tree = dict(repo.files(branch))
        if path in tree and "sha" not in body:
            return 422, {"message": "Invalid request.\n\n\"sha\" wasn't supplied."}
        if path in tree and body["sha"] != blob_sha(tree[path]):
            return 409, {"message": f"{path} does not match {body['sha']}"}
        tree[path] = base64.b64decode(body["content"], validate=True)
        sha = next(self._shas)
        repo.commits[sha] = tree
        repo.refs[branch] = sha
        return (200 if "sha" in body else 201), {"content": {"path": path, "sha": blob_sha(tree[path])},
                                                 "commit": {"sha": sha, "message": body["message"]}}

    def _create_pull(self, repo: FakeRepo, body: dict):
        owner = repo.full_name.split("/")[0]
        head, base = body.get("head", ""), body.get("base", "")
        label = head if ":" in head else f"{owner}:{head}"
        branch = label.split(":", 1)[1]
        if branch not in repo.refs or base not in repo.refs or not body.get("title"):
            return 422, {"message": "Validation Failed", "errors": [{"resource": "PullRequest", "code": "invalid"}]}
        if any(p["head"]["label"] == label and p["base"]["ref"] == base and p["state"] == "open" for p in repo.pulls):
            error = {"resource": "PullRequest", "message": f"A pull request already exists for {label}."}
            return 422, {"message": "Validation Failed", "errors": [error]}
        number = max([0, *repo.issues, *(p["number"] for p in repo.pulls)]) + 1
        pull = {"number": number, "state": "open", "title": body["title"], "body": body.get("body"),
                "head": {"label": label, "ref": branch, "sha": repo.refs[branch]}, "base": {"ref": base},
                "html_url": f"https://github.com/{repo.full_name}/pull/{number}"}
        repo.pulls.append(pull)
        return 201, pull


class _Handler(BaseHTTPRequestHandler):
    fake: GitHubFake

    def _serve(self) -> None:
        fake = self.fake
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        auth = self.headers.get("Authorization")
        with fake._lock:
            sent = {k.lower(): v for k, v in self.headers.items()}
            fake.requests.append(Request(self.command, url.path, query, body, auth, sent))
            canned = fake._canned.pop(0) if fake._canned else None
            if canned is None:
                status, answer = fake.handle(self.command, url.path, query, body, auth)
                headers = {}
        if canned is not None:
            time.sleep(canned.delay_s)
            status, answer, headers = canned.status, canned.body, canned.headers
        data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # a client that timed out has gone
            pass

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format, *args) -> None:  # quiet: pytest shows the requests list on failure
        pass


@pytest.fixture
def github_fake(monkeypatch):
    """A running GitHubFake; GITHUB_API_URL and GITHUB_TOKEN point the client at it for the test."""
    fake = GitHubFake()
    monkeypatch.setenv("GITHUB_API_URL", fake.url)
    monkeypatch.setenv("GITHUB_TOKEN", fake.token)
    try:
        yield fake
    finally:
        fake.close()
