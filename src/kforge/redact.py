"""Secrets never leave: the last line of defence before text reaches a verdict, a log, stderr or a report.

    redact("key is sk-ant-123456789")      # "key is [redacted ANTHROPIC_API_KEY]"
    redact_data(worker_value, extra={"secret seed": str(seed)})

The first lines of defence are elsewhere (the sandbox gives workers a clean environment, the
static check keeps candidates away from it); this module assumes they failed and removes every
known secret value from text that crossed a trust boundary: the values of this process's
environment variables whose names look secret (`DENY`), plus values the caller names (the
evaluator's secret seed). Stdlib only, so every layer may use it.
"""
from __future__ import annotations

import fnmatch
import os
from typing import Any, Mapping

# Variable names that hold secrets (patterns, case-insensitive). The sandbox passes none of them
# to a worker, whatever its allow-list says.
DENY: tuple[str, ...] = ("*KEY*", "*TOKEN*", "*SECRET*", "*PASSWORD*", "*PASSWD*", "*CREDENTIAL*", "*AUTH*",
                         "*SESSION*", "*COOKIE*", "AWS_*", "AZURE_*", "GOOGLE_*", "GCP_*")
MIN_SECRET_CHARS = 6  # shorter values ("1", "true") are not secrets and would blank out ordinary text


def denied(name: str) -> bool:
    """Whether an environment variable called `name` holds a secret."""
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, p) for p in DENY)


def secret_values(env: Mapping[str, str] | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """value -> label for every secret known here: denied variables of `env` (default os.environ)
    and `extra` (label -> value)."""
    env = os.environ if env is None else env
    found = {value: name for name, value in env.items() if denied(name) and len(value) >= MIN_SECRET_CHARS}
    for label, value in (extra or {}).items():
        value = str(value)
        if len(value) >= MIN_SECRET_CHARS:
            found[value] = label
    return found


def redact(text: str, extra: Mapping[str, str] | None = None, *, env: Mapping[str, str] | None = None) -> str:
    """`text` with every known secret value replaced by `[redacted NAME]`, longest values first
    (a secret that contains another is removed whole)."""
    if not text:
        return text
    for value, label in sorted(secret_values(env, extra).items(), key=lambda kv: -len(kv[0])):
        if value in text:
            text = text.replace(value, f"[redacted {label}]")
    return text


def redact_data(data: Any, extra: Mapping[str, str] | None = None, *, env: Mapping[str, str] | None = None) -> Any:
    """JSON data (dicts, lists, strings, numbers) with `redact` applied to every string, keys included."""
    secrets = secret_values(env, extra)
    if not secrets:
        return data
    ordered = sorted(secrets.items(), key=lambda kv: -len(kv[0]))

    def clean(text: str) -> str:
        for value, label in ordered:
            if value in text:
                text = text.replace(value, f"[redacted {label}]")
        return text

    def walk(obj: Any) -> Any:
        if isinstance(obj, str):
            return clean(obj)
        if isinstance(obj, dict):
            return {clean(k) if isinstance(k, str) else k: walk(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [walk(v) for v in obj]
        return obj

    return walk(data)
