"""The prompt templates of `kforge generate`, and their renderer. All prompt prose lives in the
`.md` files beside this module; Python only formats data into them.

    render("task", op="rms_norm", knowledge_section=None, ...)

Templates are `string.Template` text (`$name`, `${name}`; `$$` is a dollar sign) with one rule
added: a line that uses a value given as None is left out (optional lines, e.g. "Measured:
$measured"). Every placeholder must be given a value: a missing one raises PromptError, so no
`$placeholder` ever reaches a model. Blank template lines never pile up (a dropped section leaves
no gap); the values themselves (source code) are inserted exactly as given.
"""
from __future__ import annotations

import functools
import json
import string
from pathlib import Path
from typing import Any

from kforge.errors import KforgeError

PROMPTS_DIR = Path(__file__).resolve().parent


class PromptError(KforgeError):
    """A template that is missing, or rendered without a value it needs."""


@functools.lru_cache(maxsize=None)
def template_text(name: str) -> str:
    path = PROMPTS_DIR / f"{name}.md"
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        valid = sorted(p.stem for p in PROMPTS_DIR.glob("*.md"))
        raise PromptError(f"no prompt template {name!r} in {PROMPTS_DIR}; valid: {', '.join(valid)}") from None


def _names(line: str) -> set[str]:
    names = set()
    for m in string.Template.pattern.finditer(line):
        name = m.group("named") or m.group("braced")
        if name:
            names.add(name)
    return names


def render(name: str, **values: Any) -> str:
    """The template `name` (`prompts/<name>.md`) with `values` substituted (str() of each), lines
    using a None value dropped, consecutive blank lines merged, surrounding blank lines stripped."""
    kept = []
    for line in template_text(name).splitlines():
        used = _names(line)
        missing = sorted(used - set(values))
        if missing:
            raise PromptError(f"prompt template {name!r} needs values for {missing}")
        if any(values[n] is None for n in used):
            continue
        try:
            rendered = string.Template(line).substitute({n: str(values[n]) for n in used})
        except ValueError as exc:  # a lone '$' in the template: write '$$'
            raise PromptError(f"prompt template {name!r}: {exc} in line {line!r}") from None
        if rendered.strip() or (kept and kept[-1].strip()):  # one blank line at most, between lines
            kept.append(rendered if rendered.strip() else "")
    return "\n".join(kept).strip("\n")


@functools.lru_cache(maxsize=None)
def load_json(name: str) -> Any:
    """A data file beside the templates (`prompts/<name>.json`)."""
    path = PROMPTS_DIR / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise PromptError(f"prompt data file {path} unreadable: {exc}") from None
