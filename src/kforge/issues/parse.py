"""The body GitHub renders from the Kernel request form, read back into a `KernelRequest`.

GitHub renders each field as `### <label>`, a blank line, then the value: `_No response_` for an
empty field, the text as typed for inputs and textareas (inside a ```<lang> fence for a textarea
with `render:`), the chosen option for dropdowns, and `- [X] option` / `- [ ] option` lines for
checkboxes. Bodies arrive with CRLF or LF line ends.

How the sections are found, so that text inside a field cannot pose as another field:
- a `### ` line inside a code fence is part of the value. A fence closes at a closing fence line
  followed by the end or by a form heading, so Python code holding a ``` line stays one value
  (found in time linear in the body: 1 MB of any pattern in well under a second);
- everything after the last field's heading (Notes) is that field's value: notes can hold any
  heading, and nothing in them reaches another field;
- a form heading found twice anywhere else is an error: the request does not run on a guess;
- an unknown heading and its text are ignored, with a warning.
"""
from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools
import operator
import re

from kforge.issues.form import BY_LABEL, FIELDS, NO_RESPONSE
from kforge.issues.request import ERROR, WARNING, KernelRequest, Problem, from_fields, shown

MAX_BODY_CHARS = 65_536  # GitHub's own limit on an issue body
_FENCE_OPEN = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")
# A superset of the lines that can open or close a fence (an indent of spaces and tabs: a closing
# line is judged after strip()) or be a heading; `_FENCE_OPEN` and `_closing` then decide.
_MARK = re.compile(r"^(?:### |[^\S\n]*(?:```|~~~))", re.MULTILINE)
_LAST = FIELDS[-1].label


@dataclasses.dataclass
class Body:
    """The sections of a body: `values` by label (None for an empty field; the first one where a
    label repeats), the labels found more than once, and warnings for what was ignored."""

    values: dict[str, str | None]
    duplicates: dict[str, int]
    warnings: list[str]


def _heading(line: str) -> str | None:
    # `### (.*?)\s*` as one fullmatch backtracks over a long run of spaces: split, then strip.
    return line[4:].rstrip() if line.startswith("### ") else None


def _closing(line: str) -> tuple[str, int] | None:
    """(fence character, length) when `line` can close a fence: at most 3 spaces of indent, then
    only backticks or only tildes, at least 3."""
    stripped = line.strip()
    if len(stripped) < 3 or stripped[0] not in "`~" or len(line) - len(line.lstrip(" ")) > 3:
        return None
    return (stripped[0], len(stripped)) if stripped.count(stripped[0]) == len(stripped) else None


class _Fences:
    """Where each fence of a body ends, in time linear in the body: the first closing line after
    the opening that the end or a form heading follows, else the first closing line at all.

    Only `marks` are looked at (the lines that can open or close a fence, or are headings). The
    closing lines that the end or a form heading follows (past blank lines) are found before the
    scan: `good` lists them and `best` the longest fence each character can close at or after each,
    so a fence that no such line closes is told so at once instead of scanning to the end (the scan
    that made a 54 KB body take 13.7 s)."""

    def __init__(self, text: str, lines: list[str], starts: list[int], marks: list[int]):
        """`text` is "\n".join(lines), line i starts at offset starts[i] (one past the end: starts[-1])."""
        self.lines, self.marks = lines, marks
        self.good: list[tuple[int, str, int]] = []  # (line index, char, length), ascending
        for h in [m for m in marks if _heading(lines[m]) in BY_LABEL] + [len(lines)]:  # the end counts too
            k = bisect.bisect_left(marks, h) - 1  # the last mark before h: a closing line is one
            if k < 0:
                continue
            m = marks[k]
            closing = _closing(lines[m])
            between = text[starts[m + 1]:starts[h]] if m + 1 < len(lines) else ""
            if closing is not None and not between.strip():  # only blank lines between it and h
                self.good.append((m, *closing))
        self.best = {c: [0] * (len(self.good) + 1) for c in "`~"}
        for k in range(len(self.good) - 1, -1, -1):
            for c in "`~":
                self.best[c][k] = self.best[c][k + 1]
            _, c, length = self.good[k]
            self.best[c][k] = max(self.best[c][k], length)
        self.next_good = 0  # the parse moves forward only: good lines before this are behind it

    def end(self, start: int, fence: str) -> int:
        """The index of the line closing the fence `fence` opened at `start` (the last line when none does)."""
        char, need = fence[0], len(fence)
        while self.next_good < len(self.good) and self.good[self.next_good][0] <= start:
            self.next_good += 1
        k = self.next_good
        if self.best[char][k] >= need:  # one exists: every line up to it lies inside this fence
            while not (self.good[k][1] == char and self.good[k][2] >= need):
                k += 1
            return self.good[k][0]
        for j in self.marks[bisect.bisect_right(self.marks, start):]:  # the first closing line: inside it too
            closing = _closing(self.lines[j])
            if closing is not None and closing[0] == char and closing[1] >= need:
                return j
        return len(self.lines) - 1


def _unfence(value: str) -> str:
    """The text inside a fence that wraps the whole of `value`; `value` itself otherwise."""
    lines = value.split("\n")
    m = _FENCE_OPEN.fullmatch(lines[0])
    closing = _closing(lines[-1]) if len(lines) >= 2 else None
    if m and "`" not in m.group(2) and closing is not None and closing[0] == m.group(1)[0] \
            and closing[1] >= len(m.group(1)):
        return "\n".join(lines[1:-1]).strip()
    return value


def split_sections(text: str) -> list[tuple[str | None, str]]:
    """(heading label, the section's text stripped) in body order; None for the text before the
    first heading. Linear in the size of `text` (see `_Fences`)."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    # The lines that can open or close a fence or be a heading; every other line is text of the
    # section it is in, so only these are looked at one by one (a 1 MB body has up to 1M lines,
    # and a Python loop over all of them alone took 0.7 s).
    starts = list(map(operator.add, itertools.accumulate(map(len, lines), initial=0), range(len(lines) + 1)))
    offsets = [m.start() for m in _MARK.finditer(text)]  # a mark starts a line: its index is exact
    marks = [i - 1 for i in map(functools.partial(bisect.bisect_right, starts), offsets)]  # line indices
    fences = _Fences(text, lines, starts, marks)
    sections: list[tuple[str | None, int, int]] = []  # (label, first line, end): None before any heading
    label, first, resume = None, 0, 0
    for i in marks:
        if label == _LAST:  # the last field's value is the rest of the body
            break
        if i < resume:  # inside a fence
            continue
        line = lines[i]
        fence = _FENCE_OPEN.fullmatch(line)
        if fence and not (fence.group(1)[0] == "`" and "`" in fence.group(2)):
            resume = fences.end(i, fence.group(1)) + 1
            continue
        heading = _heading(line)
        if heading is not None:
            sections.append((label, first, i))
            label, first = heading, i + 1
    sections.append((label, first, len(lines)))
    return [(label, "\n".join(lines[first:end]).strip()) for label, first, end in sections]


def parse_sections(text: str) -> Body:
    """The sections of a rendered body (see the module docstring for the rules)."""
    values: dict[str, str | None] = {}
    duplicates: dict[str, int] = {}
    warnings = []
    for label, value in split_sections(text):
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
