"""From a model's answer to a candidate source: find the code, splice EVOLVE-BLOCK regions, check it.

    source = extract_source(completion.text, parent_source=parent)   # or ExtractionError
    extracted = check_answer(completion.text, spec, parent_source=parent)
    if not extracted.ok:                                              # static findings
        retry = corrective_message(extracted)                         # one bounded re-prompt

Which code counts (`extract_source`):
  - fenced blocks (``` or ~~~, any length) tagged python/py, else untagged ones, else any block
    whose text parses as Python; an answer with no fence at all counts only when the whole text
    is a Python file defining `forward` (a program that prints a file, not prose);
  - of those, the last complete file (parses, imports triton, defines a module-level `forward`):
    models revise, and the final version comes last. No complete block: a single block is taken
    as it is (the static checks say what it lacks); several that together define forward (a
    kernel block, then a host block) are joined; otherwise the answer is ambiguous;
  - with a parent holding one `# EVOLVE-BLOCK-START` / `# EVOLVE-BLOCK-END` region, the answer's
    region (between its markers, or the whole block when it has none) replaces the parent's, and
    every byte outside the markers stays the parent's. A block that is a whole candidate file
    (imports triton, defines forward, no markers) is taken as the new file instead.
Errors say exactly what is wrong (no block, ambiguous blocks, unbalanced markers, a syntax error
with its line) so the corrective re-prompt can quote them.
"""
from __future__ import annotations

import ast
import dataclasses
import enum
import re
import textwrap
from typing import Sequence

from kforge.errors import KforgeError
from kforge.evaluate import static
from kforge.evaluate.static import Finding
from kforge.gen.prompts import render
from kforge.gen.types import Message, Role
from kforge.specs import OpSpec

EVOLVE_START = "# EVOLVE-BLOCK-START"
EVOLVE_END = "# EVOLVE-BLOCK-END"
PYTHON_TAGS = ("python", "py", "python3", "py3")
_OPEN = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n]*?)[ \t]*$")


class Problem(str, enum.Enum):
    NO_CODE = "no-code"
    AMBIGUOUS = "ambiguous"  # several blocks, none a complete file, not joinable into one
    MARKERS = "markers"  # EVOLVE-BLOCK markers unbalanced, repeated or out of order
    SYNTAX = "syntax"


class ExtractionError(KforgeError):
    """An answer no candidate source can be taken from. `line` is 1-based in the source that
    failed to parse (None when no source was found)."""

    def __init__(self, problem: Problem, message: str, line: int | None = None):
        self.problem = problem
        self.line = line
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class Block:
    lang: str  # first word of the fence's info string, lower case ("" when untagged)
    text: str
    line: int  # 1-based line of the answer where the code starts
    closed: bool


@dataclasses.dataclass(frozen=True)
class Extracted:
    source: str
    findings: tuple[Finding, ...] = ()
    spliced: bool = False  # an EVOLVE-BLOCK region put into the parent

    @property
    def ok(self) -> bool:
        return not self.findings


def code_blocks(text: str) -> list[Block]:
    """Fenced code blocks of a markdown answer, in order. A fence left open runs to the end."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if m is None or (m["fence"][0] == "`" and "`" in m["info"]):
            i += 1
            continue
        fence = m["fence"]
        close = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        body = "\n".join(lines[i + 1:j])
        blocks.append(Block(lang=(m["info"].split() or [""])[0].lower(), text=body + "\n" if body else "",
                            line=i + 2, closed=j < len(lines)))
        i = j + 1
    return blocks


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return True


def _defines_forward(source: str) -> bool:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "forward" for n in tree.body)


def _is_whole_file(source: str) -> bool:
    """A candidate file of its own: defines forward and imports triton."""
    if not _defines_forward(source):
        return False
    tree = ast.parse(source)
    return any(isinstance(n, ast.Import) and any(a.name.split(".")[0] == "triton" for a in n.names)
               or isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "triton" for n in tree.body)


def _marker_lines(source: str) -> tuple[list[int], list[int]]:
    lines = source.splitlines()
    return ([i for i, s in enumerate(lines) if s.strip().startswith(EVOLVE_START)],
            [i for i, s in enumerate(lines) if s.strip().startswith(EVOLVE_END)])


def evolve_region(source: str, what: str = "the parent") -> tuple[int, int] | None:
    """(start, end) character offsets of the text between the marker lines of `source` (the lines
    strictly between them), or None when it has no markers. Raises ExtractionError (MARKERS) when
    they are unbalanced, repeated or out of order."""
    starts, ends = _marker_lines(source)
    if not starts and not ends:
        return None
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ExtractionError(Problem.MARKERS, f"{what} must hold exactly one '{EVOLVE_START}' line followed by one "
                              f"'{EVOLVE_END}' line; found {len(starts)} start marker(s) at lines "
                              f"{[s + 1 for s in starts]} and {len(ends)} end marker(s) at lines {[e + 1 for e in ends]}")
    lines = source.splitlines(keepends=True)
    start = sum(len(s) for s in lines[:starts[0] + 1])
    end = sum(len(s) for s in lines[:ends[0]])
    return start, end


def region_of(source: str, what: str = "the parent") -> str | None:
    """The text between the markers of `source`, or None when it has none."""
    span = evolve_region(source, what)
    return None if span is None else source[span[0]:span[1]]


def splice(parent: str, region: str) -> str:
    """`parent` with the text between its markers replaced by `region` (re-indented to the start
    marker's indentation when the region came less indented); bytes outside the markers unchanged."""
    span = evolve_region(parent)
    if span is None:
        raise ExtractionError(Problem.MARKERS, f"the parent has no '{EVOLVE_START}' / '{EVOLVE_END}' region to replace")
    start, end = span
    marker_line = parent[:start].splitlines()[-1]
    indent = marker_line[:len(marker_line) - len(marker_line.lstrip())]
    if indent and region.strip() and _common_indent(region) < len(indent):  # a region inside a function
        region = textwrap.indent(textwrap.dedent(region), indent)
    if region and not region.endswith("\n"):
        region += "\n"
    return parent[:start] + region + parent[end:]


def _common_indent(text: str) -> int:
    widths = [len(s) - len(s.lstrip()) for s in text.splitlines() if s.strip()]
    return min(widths, default=0)


def _syntax_error(source: str, where: str, closed: bool = True, note: str = "") -> ExtractionError | None:
    try:
        ast.parse(source)
    except SyntaxError as exc:
        line = exc.lineno or 0
        lines = source.splitlines()
        text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
        cut = "" if closed else " (the code block is never closed: was the answer cut off at its token limit?)"
        return ExtractionError(Problem.SYNTAX, f"{where} does not parse: line {line}: {exc.msg}"
                               + (f": {text!r}" if text else "") + note + cut, line=line)
    except ValueError as exc:  # null bytes
        return ExtractionError(Problem.SYNTAX, f"{where} does not parse: {exc}", line=None)
    return None


def _pool(blocks: list[Block]) -> list[Block]:
    tagged = [b for b in blocks if b.lang in PYTHON_TAGS and b.text.strip()]
    if tagged:
        return tagged
    untagged = [b for b in blocks if not b.lang and b.text.strip()]
    if untagged:
        return untagged
    return [b for b in blocks if b.text.strip() and _parses(b.text)]


def extract_source(text: str, parent_source: str | None = None, *, evolve: bool = True) -> str:
    """The candidate source in a model's answer; see the module docstring for the rules. With a
    `parent_source` holding an EVOLVE-BLOCK region (and `evolve`, as the prompt asked for a
    region), the answer's region is spliced into it. Raises ExtractionError."""
    return _extract(text, parent_source, evolve)[0]


def _extract(text: str, parent_source: str | None, evolve: bool) -> tuple[str, bool]:
    """(source, whether it was spliced into the parent)."""
    region_mode = evolve and parent_source is not None and evolve_region(parent_source) is not None
    pool = _pool(code_blocks(text))
    if not pool:
        raw = text.strip() + "\n"
        if _defines_forward(raw) or (region_mode and all(_marker_lines(raw))):
            pool = [Block("", raw, 1, True)]
        else:
            raise ExtractionError(Problem.NO_CODE, "the answer holds no fenced code block: put the file in a block "
                                  "that starts with ```python and ends with ```")
    if region_mode:
        return _extract_region(pool, parent_source)
    complete = [b for b in pool if _is_whole_file(b.text)]
    if complete:
        return complete[-1].text, False
    if len(pool) == 1:
        block = pool[0]
        error = _syntax_error(block.text, f"the code block at line {block.line} of the answer", block.closed)
        if error is not None:
            raise error
        return block.text, False
    joined = "\n".join(b.text.rstrip("\n") for b in pool) + "\n"
    if _defines_forward(joined):
        return joined, False
    with_forward = [b for b in pool if re.search(r"^(async )?def forward\b", b.text, re.M)]
    if with_forward:
        block = with_forward[-1]
        error = _syntax_error(block.text, f"the code block at line {block.line} of the answer", block.closed)
        if error is not None:
            raise error
    raise ExtractionError(Problem.AMBIGUOUS, f"the answer holds {len(pool)} code blocks (at lines "
                          f"{[b.line for b in pool]}); none is a complete file defining forward(...), and "
                          "together they do not form one: give the whole file in a single block")


def _extract_region(pool: list[Block], parent: str) -> tuple[str, bool]:
    with_markers = [b for b in pool if any(_marker_lines(b.text))]
    if with_markers:
        block = with_markers[-1]
        region = region_of(block.text, f"the code block at line {block.line} of the answer")
    else:
        block = pool[-1]
        if _is_whole_file(block.text):
            return block.text, False  # the model rewrote the whole file: a candidate all the same
        region = block.text
    source = splice(parent, region)
    first = source[:evolve_region(source)[0]].count("\n") + 1
    error = _syntax_error(source, f"the parent with the region from the code block at line {block.line} of the "
                          "answer spliced in", block.closed, f" (the region starts at line {first} of the spliced file)")
    if error is not None:
        raise error
    return source, True


def check_answer(text: str, spec: OpSpec, parent_source: str | None = None, *, evolve: bool = True) -> Extracted:
    """`extract_source`, then kforge's static checks (`kforge.evaluate.static.check_source`) on
    the result against `spec` (an OpSpec). Raises ExtractionError when there is no source."""
    source, spliced = _extract(text, parent_source, evolve)
    return Extracted(source=source, findings=tuple(static.check_source(source, spec)), spliced=spliced)


def corrective_message(problem: ExtractionError | Extracted | Sequence[Finding]) -> Message:
    """The user message of the one corrective re-prompt after an unusable answer: what was wrong
    (the extraction error, or the static findings) and what to send instead."""
    if isinstance(problem, ExtractionError):
        return Message(Role.USER, render("fix_format", problem=str(problem)))
    findings = problem.findings if isinstance(problem, Extracted) else tuple(problem)
    if not findings:
        raise ValueError("corrective_message: the answer has no findings to correct")
    return Message(Role.USER, render("fix_static", findings="\n".join(f"- {f}" for f in findings)))
