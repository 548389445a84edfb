"""A maintainer's approval, tied to the body they read: `/kforge <hash>`.

`kforge issue parse` shows (and the workflow posts) the body's sha256 as a 12-digit prefix; a run
starts only on a maintainer's comment `/kforge <hash>` whose hash is a prefix (12 digits or more)
of the sha256 of the body being run. An edited body has another hash, so it needs a new approval:
a request cannot be changed between the maintainer's reading and the run.

The hash is of the body as the parser reads it (BOM removed, CRLF and CR read as LF), encoded as
UTF-8, so the copy read through the API and the copy written to a file hash the same.
"""
from __future__ import annotations

import hashlib
import re

from kforge.errors import KforgeError

SHOWN_CHARS = 12  # digits shown and required: 48 bits, far beyond what a forged edit could match
_COMMAND = re.compile(r"/kforge\b[ \t]*(\S*)")


class ApprovalError(KforgeError):
    """No approval, or one for another version of the body."""


def body_sha256(body: str) -> str:
    """The full sha256 (hex) of `body` as the parser reads it."""
    text = body.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def body_hash(body: str) -> str:
    """The hash shown for `body` and expected in its approval: the sha256's first 12 hex digits."""
    return body_sha256(body)[:SHOWN_CHARS]


def approval_command(body: str) -> str:
    """The comment a maintainer posts to run `body`: `/kforge <hash>`."""
    return f"/kforge {body_hash(body)}"


def hash_of_comment(comment: str) -> str | None:
    """The hash a `/kforge <hash>` comment names (its first line), None when it names none."""
    first = comment.lstrip().split("\n", 1)[0].strip()
    m = _COMMAND.match(first)
    if m is None:
        raise ApprovalError(f"the approval {_shown(first)} is not a `/kforge <hash>` comment")
    return m.group(1) or None


def check(body: str, *, comment: str | None = None, expected: str | None = None) -> str:
    """The body's hash when `comment` (a `/kforge <hash>` comment) or `expected` (a hash) approves
    exactly this `body`; ApprovalError saying what to do otherwise."""
    current = body_sha256(body)
    given = hash_of_comment(comment) if comment is not None else expected
    if not given:
        raise ApprovalError(f"the approval names no body hash: a maintainer who has read the request "
                            f"comments `/kforge {current[:SHOWN_CHARS]}` (the hash `kforge issue parse` posted "
                            "for this body), so that an edit after the approval does not run")
    given = given.lower()
    if not re.fullmatch(r"[0-9a-f]{12,64}", given):
        raise ApprovalError(f"the approval's hash {_shown(given)} is not {SHOWN_CHARS} to 64 hex digits of a sha256")
    if not current.startswith(given):
        raise ApprovalError(f"the approval is for body {given[:SHOWN_CHARS]}, but the body is now "
                            f"{current[:SHOWN_CHARS]}: it was edited after the approval (or the hash was "
                            f"mistyped). Read it again, then comment `/kforge {current[:SHOWN_CHARS]}`")
    return current[:SHOWN_CHARS]


def _shown(text: str) -> str:
    from kforge.issues.request import shown

    return shown(text)
