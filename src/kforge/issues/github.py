"""A small GitHub REST client: what the issue workflow needs and nothing else (stdlib only).

Read an issue, post a comment, create a branch, commit files through the contents API, open a pull
request. Every argument is validated before any request is sent: a repository, branch or path that
arrives from an issue (untrusted text) never reaches a URL unchecked. Errors are `GitHubError`s that
name the method, the API path, the HTTP status and GitHub's message, and never the token.

The token comes from GITHUB_TOKEN (reads of public repositories work without one; writes need it),
the API root from GITHUB_API_URL (GitHub Enterprise, or a loopback fake in tests).
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import re
import unicodedata
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from kforge import __version__
from kforge.errors import KforgeError

DEFAULT_API_URL = "https://api.github.com"
TOKEN_VAR = "GITHUB_TOKEN"
API_URL_VAR = "GITHUB_API_URL"
API_VERSION = "2022-11-28"
USER_AGENT = f"kforge/{__version__}"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_COMMENT_CHARS = 65536  # GitHub rejects longer issue comments and pull-request bodies (HTTP 422)
MAX_TITLE_CHARS = 256
MAX_BRANCH_CHARS = 200
MAX_PATH_CHARS = 1024
MAX_ERROR_BODY_CHARS = 300  # of a non-JSON error body quoted in a message

_REPO_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_OWNER_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
# Stricter than git's own rules (which allow most punctuation and any non-ASCII): a branch name from
# an issue may end up in a shell line or a file name someday, so only these characters pass.
_BRANCH_CHARS_RE = re.compile(r"^[A-Za-z0-9._/-]+$")
_SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")  # SHA-1, or SHA-256 repositories


class GitHubError(KforgeError):
    """A GitHub call that failed, or an argument refused before any call was made.

    `status` is the HTTP status (None for validation and network errors), `method` and `path` the
    request (path relative to the API root, without the query), `argument` the argument at fault
    for a validation error."""

    def __init__(self, message: str, *, status: int | None = None, method: str | None = None,
                 path: str | None = None, argument: str | None = None):
        self.status = status
        self.method = method
        self.path = path
        self.argument = argument
        self.message = message
        where = f"{method} {path}" if method and path else None
        prefix = "GitHub"
        if where:
            prefix += f" {where}"
        if status is not None:
            prefix += f" -> HTTP {status}"
        super().__init__(f"{prefix}: {message}")


@dataclass(frozen=True)
class Issue:
    """An issue as the workflow sees it. `body` is the raw, untrusted markdown ("" when empty);
    `labels` the label names; `author` the login; `author_association` GitHub's OWNER, MEMBER,
    COLLABORATOR, CONTRIBUTOR, NONE, ...; `state` "open" or "closed"; `url` the html_url."""
    number: int
    title: str
    body: str
    labels: tuple[str, ...]
    author: str
    author_association: str
    state: str
    url: str


# -- validation: every check runs before a request, and names the argument --------------------------
def _refuse(argument: str, value: Any, why: str) -> GitHubError:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return GitHubError(f"argument '{argument}' {why} (got {shown})", argument=argument)


def _has_control(text: str) -> bool:
    """Control, format (bidi overrides, zero-width), surrogate, private-use or unassigned characters."""
    return any(unicodedata.category(c).startswith("C") for c in text)


def check_repo(repo: Any) -> tuple[str, str]:
    """OWNER/NAME -> (owner, name); refuses anything else, "." and ".." parts included."""
    if not isinstance(repo, str) or not _REPO_RE.fullmatch(repo):
        raise _refuse("repo", repo, "must be OWNER/NAME (letters, digits, '_', '.', '-')")
    owner, name = repo.split("/")
    if set(owner) == {"."} or set(name) == {"."}:
        raise _refuse("repo", repo, "must be OWNER/NAME, not a relative path")
    return owner, name


def check_number(number: Any, argument: str = "number") -> int:
    if isinstance(number, bool) or not isinstance(number, int) or number <= 0:
        raise _refuse(argument, number, "must be a positive integer")
    return number


def check_branch(branch: Any, argument: str = "branch") -> str:
    """A branch name by git's ref rules (check-ref-format --branch), on a restricted character set."""
    if not isinstance(branch, str) or not branch:
        raise _refuse(argument, branch, "must be a non-empty branch name")
    if len(branch) > MAX_BRANCH_CHARS:
        raise _refuse(argument, branch, f"is longer than {MAX_BRANCH_CHARS} characters")
    if not _BRANCH_CHARS_RE.fullmatch(branch):
        raise _refuse(argument, branch, "may hold only letters, digits, '.', '_', '-' and '/'")
    parts = branch.split("/")
    problems = [
        (".." in branch, "may not contain '..'"),
        ("" in parts, "may not start or end with '/' or hold '//'"),
        (branch.startswith("-"), "may not start with '-'"),
        (branch.endswith("."), "may not end with '.'"),
        (any(p.startswith(".") or p.endswith(".lock") for p in parts),
         "may not have a part starting with '.' or ending with '.lock'"),
        (branch == "HEAD", "may not be 'HEAD'"),
    ]
    for bad, why in problems:
        if bad:
            raise _refuse(argument, branch, why)
    return branch


def check_path(path: Any) -> str:
    """A file path inside the repository: relative, '/'-separated, no '.', '..' or empty parts, no
    backslash, no control characters, nothing under .git."""
    if not isinstance(path, str) or not path:
        raise _refuse("path", path, "must be a non-empty relative path")
    if len(path) > MAX_PATH_CHARS:
        raise _refuse("path", path, f"is longer than {MAX_PATH_CHARS} characters")
    if _has_control(path):
        raise _refuse("path", path, "may not contain control characters")
    if path.startswith("/") or "\\" in path:
        raise _refuse("path", path, "must be relative and '/'-separated")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise _refuse("path", path, "may not have empty, '.' or '..' parts")
    if any(p.lower() == ".git" for p in parts):
        raise _refuse("path", path, "may not point into .git")
    return path


def check_sha(sha: Any, argument: str) -> str:
    if not isinstance(sha, str) or not _SHA_RE.fullmatch(sha):
        raise _refuse(argument, sha, "must be a full commit sha (40 or 64 lowercase hex digits)")
    return sha


def check_text(text: Any, argument: str, limit: int, *, empty_ok: bool = False, one_line: bool = False) -> str:
    if not isinstance(text, str) or (not empty_ok and not text.strip()):
        raise _refuse(argument, text, "must be a non-empty string" if not empty_ok else "must be a string")
    if len(text) > limit:
        raise _refuse(argument, text, f"is longer than GitHub's limit of {limit} characters")
    if one_line and _has_control(text):
        raise _refuse(argument, text, "must be one line without control characters")
    return text


def check_api_url(url: str) -> str:
    """https, or plain http to a loopback host only (the token is sent with every request)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise GitHubError(f"{API_URL_VAR} / api_url must be an http(s) URL, got {url!r}", argument="api_url")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise GitHubError(f"{API_URL_VAR} / api_url must use https for a non-loopback host "
                          f"(the token would travel in clear), got {url!r}", argument="api_url")
    return url.rstrip("/")


def _seg(text: str) -> str:
    return quote(text, safe="")


def _segs(text: str) -> str:
    """A validated branch or path, each part URL-quoted, slashes kept."""
    return "/".join(_seg(p) for p in text.split("/"))


def _pick(answer: Any, keys: tuple, method: str, path: str) -> Any:
    """answer[k0][k1]...; a GitHubError naming the missing field when the answer lacks it."""
    for depth, key in enumerate(keys):
        try:
            answer = answer[key]
        except (KeyError, IndexError, TypeError):
            field = ".".join(str(k) for k in keys[:depth + 1])
            raise GitHubError(f"unexpected answer: no field {field!r}", method=method, path=path) from None
    return answer


# -- redirects: followed only on the API's own origin, so the token never leaves it ---------------------
class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urlsplit(req.full_url), urlsplit(newurl)
        if (old.scheme, old.netloc) != (new.scheme, new.netloc):
            raise GitHubError(f"refused a redirect to another host ({new.scheme}://{new.netloc})",
                              status=code, method=req.get_method(), path=old.path)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class GitHub:
    """The client. `token` defaults to $GITHUB_TOKEN, `api_url` to $GITHUB_API_URL or
    https://api.github.com; `timeout_s` bounds each request."""

    def __init__(self, token: str | None = None, api_url: str | None = None, timeout_s: float = 30):
        token = token if token is not None else os.environ.get(TOKEN_VAR, "")
        token = token.strip()
        if token and (_has_control(token) or " " in token):
            raise GitHubError(f"the token ({TOKEN_VAR}) holds whitespace or control characters", argument="token")
        self._token = token or None
        self.api_url = check_api_url(api_url or os.environ.get(API_URL_VAR, "").strip() or DEFAULT_API_URL)
        self.timeout_s = float(timeout_s)
        self._opener = urllib.request.build_opener(_SameOriginRedirects())

    def __repr__(self) -> str:
        return f"GitHub(api_url={self.api_url!r}, token={'set' if self._token else 'unset'})"

    @property
    def has_token(self) -> bool:
        return self._token is not None

    # -- reads ---------------------------------------------------------------------------------------
    def issue(self, repo: str, number: int) -> Issue:
        """The issue `number` of `repo`. A pull request (GitHub serves those as issues too) is refused."""
        check_repo(repo)
        check_number(number)
        path = f"/repos/{repo}/issues/{number}"
        data = self._call("GET", path)
        if not isinstance(data, dict):
            raise GitHubError("unexpected answer: not an object", method="GET", path=path)
        if data.get("pull_request"):
            raise GitHubError(f"#{number} is a pull request, not an issue", method="GET", path=path)
        user = data.get("user") or {}
        labels = tuple(str(label.get("name", "")) if isinstance(label, dict) else str(label)
                       for label in data.get("labels") or ())
        return Issue(number=number, title=data.get("title") or "", body=data.get("body") or "",
                     labels=labels, author=user.get("login") or "",
                     author_association=data.get("author_association") or "NONE",
                     state=data.get("state") or "", url=data.get("html_url") or "")

    def default_branch(self, repo: str) -> str:
        check_repo(repo)
        return self._call("GET", f"/repos/{repo}", pick=("default_branch",))

    def branch_sha(self, repo: str, branch: str) -> str:
        """The commit sha the branch points at."""
        check_repo(repo)
        check_branch(branch)
        return self._call("GET", f"/repos/{repo}/git/ref/heads/{_segs(branch)}", pick=("object", "sha"))

    # -- writes --------------------------------------------------------------------------------------
    def comment(self, repo: str, number: int, body: str) -> str:
        """Post `body` (markdown) on issue or pull request `number`; returns the comment's html_url."""
        check_repo(repo)
        check_number(number)
        check_text(body, "body", MAX_COMMENT_CHARS)
        self._need_token("post a comment", "issues: write")
        return self._call("POST", f"/repos/{repo}/issues/{number}/comments", {"body": body}, pick=("html_url",))

    def create_branch(self, repo: str, name: str, from_sha: str, exist_ok: bool = False) -> None:
        """Create branch `name` at `from_sha`. A branch of that name already there is an error, unless
        `exist_ok` and it points at `from_sha`."""
        check_repo(repo)
        check_branch(name, "name")
        check_sha(from_sha, "from_sha")
        self._need_token("create a branch", "contents: write")
        try:
            self._call("POST", f"/repos/{repo}/git/refs", {"ref": f"refs/heads/{name}", "sha": from_sha})
            return
        except GitHubError as error:
            if error.status != 422:
                raise
            try:  # 422 is also what an unknown sha gets: only an existing branch explains it here
                current = self.branch_sha(repo, name)
            except GitHubError as lookup:
                if lookup.status == 404:
                    raise error from None
                raise
        if not exist_ok:
            raise GitHubError(f"branch {name!r} already exists (at {current})", status=422,
                              method="POST", path=f"/repos/{repo}/git/refs")
        if current != from_sha:
            raise GitHubError(f"branch {name!r} already exists at {current}, not at {from_sha}",
                              status=422, method="POST", path=f"/repos/{repo}/git/refs")

    def put_file(self, repo: str, branch: str, path: str, content: bytes, message: str) -> str:
        """Create or update `path` on `branch` with `content` in one commit; returns the commit sha.
        An update sends the current blob sha, read first (GitHub's guard against lost updates)."""
        check_repo(repo)
        check_branch(branch)
        check_path(path)
        if not isinstance(content, (bytes, bytearray, memoryview)):
            raise _refuse("content", type(content).__name__, "must be bytes")
        check_text(message, "message", MAX_COMMENT_CHARS)
        self._need_token("commit a file", "contents: write")
        api_path = f"/repos/{repo}/contents/{_segs(path)}"
        try:
            current = self._call("GET", api_path, query={"ref": branch})
        except GitHubError as error:
            if error.status != 404:
                raise
            current = None
        payload = {"message": message, "content": base64.b64encode(bytes(content)).decode("ascii"), "branch": branch}
        if current is not None:
            if not isinstance(current, dict) or current.get("type") != "file":
                raise GitHubError(f"{path!r} on {branch!r} exists and is not a file", method="GET", path=api_path)
            payload["sha"] = _pick(current, ("sha",), "GET", api_path)
        return self._call("PUT", api_path, payload, pick=("commit", "sha"))

    def pull_request(self, repo: str, head: str, base: str, title: str, body: str) -> str:
        """Open a pull request from `head` (a branch, or OWNER:BRANCH for a fork) into `base`; returns
        its html_url. An open pull request from `head` into `base` already there is returned instead."""
        owner, _ = check_repo(repo)
        head_owner, _, head_branch = head.rpartition(":") if isinstance(head, str) else ("", "", head)
        if head_owner and not _OWNER_RE.fullmatch(head_owner):
            raise _refuse("head", head, "must be BRANCH or OWNER:BRANCH")
        check_branch(head_branch, "head")
        check_branch(base, "base")
        check_text(title, "title", MAX_TITLE_CHARS, one_line=True)
        check_text(body, "body", MAX_COMMENT_CHARS, empty_ok=True)
        self._need_token("open a pull request", "pull-requests: write")
        path = f"/repos/{repo}/pulls"
        query = {"head": f"{head_owner or owner}:{head_branch}", "base": base, "state": "open"}
        found = self._call("GET", path, query=query)
        if found:
            return _pick(found, (0, "html_url"), "GET", path)
        try:
            return self._call("POST", path, {"title": title, "head": head, "base": base, "body": body},
                              pick=("html_url",))
        except GitHubError as error:
            if error.status == 422:  # opened by someone else since the look-up
                found = self._call("GET", path, query=query)
                if found:
                    return _pick(found, (0, "html_url"), "GET", path)
            raise

    # -- the one place requests are made --------------------------------------------------------------
    def _need_token(self, action: str, permission: str) -> None:
        if self._token is None:
            raise GitHubError(f"a token is needed to {action}: set {TOKEN_VAR} (a token with "
                              f"'{permission}' permission on the repository)", argument="token")

    def _call(self, method: str, path: str, payload: dict | None = None, query: dict | None = None,
              pick: tuple = ()) -> Any:
        """One request; the decoded JSON answer, or the field `pick` names in it. Any failure, a
        missing field included, becomes a GitHubError."""
        url = self.api_url + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION,
                   "User-Agent": USER_AGENT}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        data = None
        if payload is not None:
            data = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            try:
                raw = error.read()
            except (OSError, http.client.HTTPException):  # the error body itself cut short
                raw = b""
            finally:
                error.close()
            raise self._http_error(method, path, error.code, error.headers, raw) from None
        except (OSError, http.client.HTTPException) as error:  # URLError and timeouts are OSErrors
            reason = getattr(error, "reason", None) or error
            raise GitHubError(self._scrub(f"network error reaching {self.api_url}: {reason}"),
                              method=method, path=path) from None
        try:
            answer = json.loads(raw) if raw.strip() else {}
        except ValueError:
            shown = self._scrub(raw[:MAX_ERROR_BODY_CHARS].decode("utf-8", "replace"))
            raise GitHubError(f"the answer is not JSON: {shown!r}", method=method, path=path) from None
        return _pick(answer, pick, method, path)

    def _http_error(self, method: str, path: str, status: int, headers, raw: bytes) -> GitHubError:
        try:
            body = json.loads(raw)
            said = str(body.get("message", "")) if isinstance(body, dict) else ""
            details = [str(e.get("message") or e.get("code") or e) if isinstance(e, dict) else str(e)
                       for e in (body.get("errors") or [])] if isinstance(body, dict) else []
        except ValueError:
            said, details = raw[:MAX_ERROR_BODY_CHARS].decode("utf-8", "replace").strip(), []
        said = "; ".join(x for x in [said, *details] if x) or "(no message)"
        remaining = headers.get("x-ratelimit-remaining") if headers else None
        retry_after = headers.get("retry-after") if headers else None
        if status in (403, 429) and (remaining == "0" or retry_after or "rate limit" in said.lower()):
            message = "rate limited"
            reset = headers.get("x-ratelimit-reset") if headers else None
            if reset and reset.isdigit():
                at = datetime.fromtimestamp(int(reset), tz=timezone.utc)
                message += f" until {at:%Y-%m-%d %H:%M:%S} UTC"
            if retry_after:
                message += f" (retry after {retry_after} s)"
            if self._token is None:
                message += f"; unauthenticated requests have a low limit: set {TOKEN_VAR}"
        elif status == 401:
            message = f"bad or expired credentials: check {TOKEN_VAR}"
        elif status == 403:
            message = f"forbidden: check {TOKEN_VAR} and its permissions on the repository"
        elif status == 404:
            hint = "" if self._token else f"; set {TOKEN_VAR} for a private repository"
            message = f"not found (or no access{hint})"
        else:
            message = "request failed"
        return GitHubError(self._scrub(f"{message}: {said}"), status=status, method=method, path=path)

    def _scrub(self, text: str) -> str:
        """GitHub never echoes a token, but a proxy's error page might: no message carries it."""
        return text.replace(self._token, "***") if self._token else text
