"""The body GitHub renders from the Kernel request form, read back into a `KernelRequest`.

GitHub renders each field as `### <label>`, a blank line, then the value: `_No response_` for an
empty field, the text as typed for inputs and textareas (inside a ```<lang> fence for a textarea
with `render:`), the chosen option for dropdowns, and `- [X] option` / `- [ ] option` lines for
checkboxes. Bodies arrive with CRLF or LF line ends.

How the sections are found, so that text inside a field cannot pose as another field:
- a `### ` line inside a code fence is part of the value. A fence closes at a closing fence line
  followed by the end or by a form heading, so Python code holding a ``` line stays one value;
- everything after the last field's heading (Notes) is that field's value: notes can hold any
  heading, and nothing in them reaches another field;
- a form heading found twice anywhere else is an error: the request does not run on a guess;
- an unknown heading and its text are ignored, with a warning.
"""
from __future__ import annotations

import dataclasses
import re

from kforge.issues.form import BY_LABEL, FIELDS, NO_RESPONSE
from kforge.issues.request import ERROR, WARNING, KernelRequest, Problem, from_fields, shown

MAX_BODY_CHARS = 65_536  # GitHub's own limit on an issue body
_HEADING = re.compile(r"### (.*?)\s*")
_FENCE_OPEN = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")
_LAST = FIELDS[-1].label


@dataclasses.dataclass
class Body:
    """The sections of a body: `values` by label (None for an empty field; the first one where a
    label repeats), the labels found more than once, and warnings for what was ignored."""

    values: dict[str, str | None]
    duplicates: dict[str, int]
    warnings: list[str]


def _heading(line: str) -> str | None:
    m = _HEADING.fullmatch(line)
    return m.group(1) if m else None


def _closes(line: str, fence: str) -> bool:
    """`line` is a closing fence for an opening `fence` (same character, at least as long)."""
    stripped = line.strip()
    return len(line) - len(line.lstrip(" ")) <= 3 and len(stripped) >= len(fence) and set(stripped) == {fence[0]}


def _fence_end(lines: list[str], start: int, fence: str) -> int:
    """The index of the line closing the fence opened at `start` (len(lines) - 1 when none does):
    the first closing line that the end or a form heading follows, else the first closing line."""
    first = None
    for j in range(start + 1, len(lines)):
        if not _closes(lines[j], fence):
            continue
        first = j if first is None else first
        k = j + 1
        while k < len(lines) and not lines[k].strip():
            k += 1
        if k == len(lines) or _heading(lines[k]) in BY_LABEL:
            return j
    return first if first is not None else len(lines) - 1


def _unfence(value: str) -> str:
    """The text inside a fence that wraps the whole of `value`; `value` itself otherwise."""
    lines = value.split("\n")
    m = _FENCE_OPEN.fullmatch(lines[0])
    if len(lines) >= 2 and m and "`" not in m.group(2) and _closes(lines[-1], m.group(1)):
        return "\n".join(lines[1:-1]).strip()
    return value


def parse_sections(text: str) -> Body:
    """The sections of a rendered body (see the module docstring for the rules)."""
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    sections: list[tuple[str | None, list[str]]] = [(None, [])]  # (label, lines); None: before any heading
    i = 0
    while i < len(lines):
        line = lines[i]
        label, body = sections[-1]
        if label == _LAST:
            body.extend(lines[i:])
            break
        fence = _FENCE_OPEN.fullmatch(line)
        if fence and not (fence.group(1)[0] == "`" and "`" in fence.group(2)):
            end = _fence_end(lines, i, fence.group(1))
            body.extend(lines[i:end + 1])
            i = end + 1
            continue
        heading = _heading(line)
        if heading is not None:
            sections.append((heading, []))
        else:
            body.append(line)
        i += 1

    values: dict[str, str | None] = {}
    duplicates: dict[str, int] = {}
    warnings = []
    for label, body in sections:
        value = "\n".join(body).strip()
        if label is None:
            if value:
                warnings.append("ignored the text before the first `###` heading")
            continue
        field = BY_LABEL.get(label)
        if field is None:
            warnings.append(f"ignored the section `### {shown(label)[1:-1]}`: not a field of the Kernel request form")
            continue
        if label in values or label in duplicates:
            duplicates[label] = duplicates.get(label, 1) + 1
            continue
        if field.render is not None:
            value = _unfence(_unfence(value))  # GitHub's fence, then one the author may have typed
        values[label] = None if value in ("", NO_RESPONSE) else value
    return Body(values, duplicates, warnings)


def parse_body(text: str) -> dict[str, str | None]:
    """{label: value} of the rendered body `text`: None for an empty field (`_No response_`), the
    code alone for a fenced textarea, the first section where a label repeats; unknown headings
    left out. `parse_request` reports what this passes over."""
    return parse_sections(text).values


def parse_request(text: str, known=None) -> tuple[KernelRequest | None, list[Problem]]:
    """The validated request of a rendered issue body, and every problem found (warnings too); the
    request is None when any problem is an error. `known`: the existing ops (default: registered
    or persisted under KFORGE_HOME)."""
    if len(text) > MAX_BODY_CHARS:
        return None, [Problem("body", f"is {len(text)} characters; at most {MAX_BODY_CHARS}")]
    body = parse_sections(text)
    problems = [Problem("body", w, WARNING) for w in body.warnings]
    problems += [Problem(BY_LABEL[label].id, f"the `### {label}` section appears {n} times: keep one (a heading "
                                             "typed into a field's text reads as a new section)")
                 for label, n in body.duplicates.items()]
    request, more = from_fields({BY_LABEL[label].id: value for label, value in body.values.items()}, known)
    problems += more
    order = {f.id: i for i, f in enumerate(FIELDS)}
    problems.sort(key=lambda p: order.get(p.field, -1))  # the form's order; whole-body problems first
    if any(p.severity == ERROR for p in problems):
        return None, problems
    return request, problems
