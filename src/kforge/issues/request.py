"""`KernelRequest`: a kernel request as kforge acts on it, and every rule a request must meet.

A request comes from an issue body (`kforge.issues.parse`), from the miss log (`kforge misses
--to-issue`) or from JSON. Its text fields are untrusted: they are checked here as data and never
run. A reference is read with `ast` only; it runs later, and only inside the sandboxed worker.

Validation reports every problem at once, as `Problem`s that `problems_markdown` renders into one
comment for the issue.
"""
from __future__ import annotations

import ast
import dataclasses
import keyword
import math
import re
from typing import Iterable, Mapping, Sequence

from kforge.errors import KforgeError
from kforge.issues.form import BY_ID, DTYPE_OPTIONS, FORM_VERSION, Goal, TargetGpu

OP_NAME = re.compile(r"[a-z][a-z0-9_]{1,40}")
MAX_SHAPES = 32
MAX_DIMS = 8
MAX_ELEMENTS = 2**31  # per shape: the primary input's element count
MAX_REFERENCE_BYTES = 20_000
MAX_NOTES_CHARS = 10_000
MAX_TOLERANCE = 10.0  # at most 10x the op's own error budget
DTYPES = tuple(DTYPE_OPTIONS.values())  # canonical names, in the form's order
DTYPE_NAMES = {**DTYPE_OPTIONS, **{d: d for d in DTYPES}, "half": "float16"}
# Names a new op cannot take: kforge.ops binds every op under its name, next to these.
_OPS_NAMESPACE = ("spec", "checks", "user", "register", "register_op", "get_spec", "is_builtin", "annotations",
                  "importlib", "entries", "specs", "entry", "library", "registry")
_FUNCTION_STYLE = ("reference", "make_inputs")
_KERNELBENCH_STYLE = ("Model", "get_inputs", "get_init_inputs")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_SHAPE = re.compile(r"\d+(\s*[x×X*,]\s*\d+)*")
_CHECKBOX = re.compile(r"[-*]\s*\[([ xX])\]\s*(.*)")

ERROR = "error"
WARNING = "warning"


class RequestError(KforgeError, ValueError):
    """A request in JSON that is not one (wrong keys or types)."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a request: `field` is a form field id (or "body" for the whole text)."""

    field: str
    message: str
    severity: str = ERROR  # WARNING: reported, but the request stands

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class KernelRequest:
    """A kernel request: which op, on which shapes and dtypes, for which GPU and goal.

    `shapes` are as `kforge bench/generate --shape` take them (what the op's `make_inputs` builds
    its arguments from); `dtypes` are canonical names ("bfloat16", "float16", "float32"), kept in
    that order; `tolerance` is the largest error accepted as a multiple of the op's error budget
    (None: the budget itself). `reference` is the PyTorch source of a new op (None for an existing
    op). `notes` is free text for people: data, never instructions.
    """

    version: int
    op: str
    new_op: bool
    reference: str | None
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    gpu: TargetGpu
    goal: Goal
    tolerance: float | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "shapes", tuple(tuple(int(d) for d in s) for s in self.shapes))
        order = {d: i for i, d in enumerate(DTYPES)}
        set_(self, "dtypes", tuple(sorted(dict.fromkeys(self.dtypes), key=lambda d: order.get(d, len(order)))))
        set_(self, "gpu", TargetGpu(self.gpu))
        set_(self, "goal", Goal(self.goal))
        if self.tolerance is not None:
            set_(self, "tolerance", float(self.tolerance))

    def to_json(self) -> dict:
        return {"version": self.version, "op": self.op, "new_op": self.new_op, "reference": self.reference,
                "shapes": [list(s) for s in self.shapes], "dtypes": list(self.dtypes), "gpu": self.gpu.value,
                "goal": self.goal.value, "tolerance": self.tolerance, "notes": self.notes}

    @classmethod
    def from_json(cls, data: Mapping) -> "KernelRequest":
        """The request `to_json` wrote; raises RequestError naming what is wrong. Not validated:
        call `validate` for the rules."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(data, Mapping) or set(data) != set(names):
            got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise RequestError(f"a kernel request in JSON has the keys {names}; got {got}")
        try:
            return cls(**{n: data[n] for n in names})
        except (TypeError, ValueError) as exc:
            raise RequestError(f"not a kernel request: {exc}") from None


# -- rules ------------------------------------------------------------------------------------------
def known_ops() -> set[str]:
    """The ops a request may name as existing: registered here, or persisted under KFORGE_HOME."""
    from kforge import ops
    from kforge.userops import persist

    return set(ops.SPECS) | set(persist.persisted())


def shown(text: str, limit: int = 40) -> str:
    """Untrusted text as a markdown code span, cut to `limit` characters: inside a code span
    nothing renders (no mentions, links, images or HTML)."""
    text = text if len(text) <= limit else text[:limit] + "..."
    text = repr(text)[1:-1].replace("`", "'")  # control characters and newlines escaped
    return f"`{text}`"


def reference_problems(source: str) -> list[str]:
    """What keeps `source` from defining an op, read with `ast` alone (nothing runs): it must
    define, at its top level, `reference(...)` and `make_inputs(shape, dtype, device, seed)`, or a
    KernelBench-style `class Model` with `forward` plus `get_inputs()` and `get_init_inputs()`."""
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > MAX_REFERENCE_BYTES:
        return [f"is {size} bytes; at most {MAX_REFERENCE_BYTES}"]
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return [f"does not parse as Python: line {exc.lineno}: {exc.msg}"]
    except (ValueError, RecursionError, MemoryError) as exc:
        return [f"does not parse as Python: {type(exc).__name__}"]
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    defined = set(functions) | set(classes)
    if defined & set(_FUNCTION_STYLE):
        out = [f"defines no top-level function `{n}`" for n in _FUNCTION_STYLE if n not in functions]
        make_inputs = functions.get("make_inputs")
        if make_inputs is not None and not make_inputs.args.vararg and len(_positional(make_inputs)) != 4:
            out.append("`make_inputs` must take (shape, dtype, device, seed)")
        return out
    if defined & set(_KERNELBENCH_STYLE):
        out = ["defines no top-level class `Model`"] if "Model" not in classes else []
        out += [f"defines no top-level function `{n}`" for n in _KERNELBENCH_STYLE[1:] if n not in functions]
        if "Model" in classes and not any(isinstance(n, ast.FunctionDef) and n.name == "forward"
                                          for n in classes["Model"].body):
            out.append("`Model` defines no `forward`")
        for name in _KERNELBENCH_STYLE[1:]:
            fn = functions.get(name)
            if fn is not None and len(_positional(fn)) - len(fn.args.defaults) > 0:
                out.append(f"`{name}` must take no arguments")
        return out
    return ["defines neither `reference` + `make_inputs(shape, dtype, device, seed)` nor a KernelBench-style "
            "`class Model` (with `forward`) + `get_inputs()` + `get_init_inputs()` at its top level"]


def _positional(fn: ast.FunctionDef) -> list[ast.arg]:
    return fn.args.posonlyargs + fn.args.args


def _check(values: Mapping, known: set[str], new_op: bool | None = None) -> list[Problem]:
    """Problems of the typed field values in `values` (a field id absent: its text did not parse,
    and that problem is already reported)."""
    out: list[Problem] = []

    def say(field: str, message: str) -> None:
        out.append(Problem(field, message))

    if "version" in values and values["version"] != FORM_VERSION:
        say("version", f"form version {shown(str(values['version']))} is not one this kforge reads ({FORM_VERSION})")
    op = values.get("op")
    existing = op in known
    if op is not None:
        if new_op is not None and new_op == existing:
            say("op", f"{shown(op)} {'is' if existing else 'is not'} an existing op, but the request says "
                      f"new_op={new_op}")
        if not existing and not OP_NAME.fullmatch(op):
            say("op", f"{shown(op)} is not an existing op ({', '.join(sorted(known))}), nor a valid new op name: "
                      "2 to 41 lowercase letters, digits and _, starting with a letter")
        elif not existing and (keyword.iskeyword(op) or op in _OPS_NAMESPACE):
            say("op", f"{shown(op)} is a reserved name; choose another name for the new op")
    if "reference" in values and op is not None:
        reference = values["reference"]
        if existing and reference:
            say("reference", f"`{op}` is an existing op: leave the reference empty, or give the new op a name "
                             "of its own")
        elif not existing and not reference and OP_NAME.fullmatch(op):
            say("reference", f"`{op}` is a new op: its PyTorch reference is required")
    if values.get("reference") and not existing:
        out.extend(Problem("reference", f"the reference {m}") for m in reference_problems(values["reference"]))
    if "shapes" in values:
        out.extend(_shape_problems(values["shapes"]))
    if "dtypes" in values:
        dtypes = values["dtypes"]
        if not dtypes:
            say("dtypes", f"choose at least one dtype ({', '.join(DTYPE_OPTIONS)})")
        unknown = [d for d in dtypes if d not in DTYPES]
        if unknown:
            say("dtypes", f"{', '.join(shown(d) for d in unknown)}: use {', '.join(DTYPE_OPTIONS)}")
        if existing and not unknown:
            from kforge.ops import SPECS

            spec = SPECS.get(op)
            taken = {str(d).removeprefix("torch.") for d in spec.dtypes} if spec is not None else set(DTYPES)
            if set(dtypes) - taken:
                say("dtypes", f"`{op}` is defined for {', '.join(sorted(taken))}, not "
                              f"{', '.join(sorted(set(dtypes) - taken))}")
    tolerance = values.get("tolerance")
    if tolerance is not None and not (math.isfinite(tolerance) and 0 < tolerance <= MAX_TOLERANCE):
        say("tolerance", f"{tolerance:g} is out of range: a multiple of the op's error budget, above 0 and at most "
                         f"{MAX_TOLERANCE:g}")
    if len(values.get("notes") or "") > MAX_NOTES_CHARS:
        say("notes", f"are {len(values['notes'])} characters; at most {MAX_NOTES_CHARS}")
    return out


def _shape_problems(shapes: Sequence[tuple[int, ...]]) -> list[Problem]:
    if not shapes:
        return [Problem("shapes", "give at least one shape, one per line, like 4096x4096")]
    out = []
    if len(shapes) > MAX_SHAPES:
        out.append(Problem("shapes", f"{len(shapes)} shapes; at most {MAX_SHAPES}"))
    for shape in shapes[:MAX_SHAPES]:
        text = "x".join(map(str, shape))
        if not 1 <= len(shape) <= MAX_DIMS:
            out.append(Problem("shapes", f"{shown(text)} has {len(shape)} dims; 1 to {MAX_DIMS}"))
        elif any(d < 1 for d in shape):
            out.append(Problem("shapes", f"{shown(text)}: every dim must be a positive integer"))
        elif math.prod(shape) > MAX_ELEMENTS:
            out.append(Problem("shapes", f"{shown(text)} has {math.prod(shape)} elements; at most 2**31"))
    return out


def validate(request: KernelRequest, known: Iterable[str] | None = None) -> list[Problem]:
    """Every problem of a typed request (from JSON, or built in code), as `from_fields` reports
    them; empty when it is valid. `known`: the existing ops (default: `known_ops()`)."""
    known = known_ops() if known is None else set(known)
    values = {f.name: getattr(request, f.name) for f in dataclasses.fields(request) if f.name != "new_op"}
    return _check(values, known, new_op=request.new_op)


# -- from the form's text ---------------------------------------------------------------------------
def parse_shapes(text: str) -> tuple[list[tuple[int, ...]], list[Problem]]:
    """One shape a line ("4096x4096", also "4096, 4096", "(2, 3, 128)" or "- 4096x4096");
    blank lines skipped, repeats dropped."""
    shapes: list[tuple[int, ...]] = []
    bad = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if line[:2] in ("- ", "* "):
            line = line[2:].strip()
        if len(line) >= 2 and line[0] + line[-1] in ("()", "[]"):
            line = line[1:-1].strip().rstrip(",").strip()
        if not line:
            continue
        if len(line) > 200 or not _SHAPE.fullmatch(line):  # the cheap test first: lines are untrusted
            bad.append(Problem("shapes", f"line {number} {shown(line)}: expected dims like 4096x4096"))
            continue
        shape = tuple(int(d) for d in re.split(r"\s*[x×X*,]\s*", line))
        if shape not in shapes:
            shapes.append(shape)
    if len(bad) > 5:
        bad = bad[:5] + [Problem("shapes", f"and {len(bad) - 5} more lines that are not shapes")]
    return shapes, bad


def parse_dtypes(text: str) -> list[str]:
    """The checked options of a checkbox list (`- [X] bf16`), or names separated by commas or
    spaces; each mapped to its canonical name where it has one (unknown names kept, for the
    problem that names them)."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    boxes = [_CHECKBOX.fullmatch(line) for line in lines]
    if lines and all(boxes):
        names = [m.group(2).strip() for m in boxes if m.group(1) in "xX"]
    else:
        names = [n for n in re.split(r"[\s,]+", text) if n]
    return [DTYPE_NAMES.get(n.lower(), n) for n in names]


def _choice(field: str, text: str, enum_type) -> tuple[object | None, list[Problem]]:
    for member in enum_type:
        if text.strip().lower() == member.value.lower():
            return member, []
    options = ", ".join(m.value for m in enum_type)
    return None, [Problem(field, f"{shown(text.strip())}: choose one of {options}")]


def from_fields(fields: Mapping[str, str | None], known: Iterable[str] | None = None
                ) -> tuple[KernelRequest | None, list[Problem]]:
    """The request the form's field values (by field id: the text, None for an empty field, absent
    for a missing section) make, and every problem; the request is None when there is an error."""
    known = known_ops() if known is None else set(known)
    values: dict = {}
    problems: list[Problem] = []

    def text_of(field: str, required: bool) -> str | None:
        if field not in fields:
            if required:
                problems.append(Problem(field, f"the `### {BY_ID[field].label}` section is missing: file the "
                                               "request with the Kernel request form"))
            return None
        value = fields[field]
        if value is None or not value.strip():
            if required:
                problems.append(Problem(field, "is required"))
            return None
        return value.strip()

    version = text_of("version", True)
    if version is not None:
        if version.isdigit() and len(version) < 6:
            values["version"] = int(version)
        else:
            problems.append(Problem("version", f"{shown(version)}: expected {FORM_VERSION}"))
    op = text_of("op", True)
    if op is not None:
        values["op"] = op
    values["reference"] = text_of("reference", False)
    shapes = text_of("shapes", True)
    if shapes is not None:
        parsed, more = parse_shapes(shapes)
        problems += more
        if parsed or not more:  # no shape at all: the lines that are not shapes say it already
            values["shapes"] = parsed
    dtypes = text_of("dtypes", True)
    values["dtypes"] = parse_dtypes(dtypes) if dtypes is not None else []
    for field, enum_type in (("gpu", TargetGpu), ("goal", Goal)):
        text = text_of(field, True)
        if text is not None:
            choice, more = _choice(field, text, enum_type)
            problems += more
            if choice is not None:
                values[field] = choice
    tolerance = text_of("tolerance", False)
    if tolerance is not None:
        if _NUMBER.fullmatch(tolerance):
            values["tolerance"] = float(tolerance)
        else:
            problems.append(Problem("tolerance", f"{shown(tolerance)}: expected a number like 2 (the largest error "
                                                 "accepted, as a multiple of the op's error budget)"))
    values["notes"] = text_of("notes", False) or ""
    problems += _check(values, known)
    if any(p.severity == ERROR for p in problems):
        return None, problems
    request = KernelRequest(version=values["version"], op=values["op"], new_op=values["op"] not in known,
                            reference=values["reference"], shapes=tuple(values["shapes"]),
                            dtypes=tuple(values["dtypes"]), gpu=values["gpu"], goal=values["goal"],
                            tolerance=values.get("tolerance"), notes=values["notes"])
    return request, problems


def problems_markdown(problems: Sequence[Problem]) -> str:
    """The problems as one markdown comment for the issue: errors first, then warnings."""
    errors = [p for p in problems if p.severity == ERROR]
    warnings = [p for p in problems if p.severity != ERROR]

    def item(p: Problem) -> str:
        field = BY_ID.get(p.field)
        return f"- **{field.label if field else 'Issue body'}**: {p.message}"

    lines = []
    if errors:
        lines += [f"**kforge cannot run this kernel request yet**: {len(errors)} "
                  f"problem{'s' if len(errors) > 1 else ''}. Edit the issue to fix "
                  f"{'them' if len(errors) > 1 else 'it'}, then a maintainer's `/kforge` comment runs it again.",
                  ""] + [item(p) for p in errors]
    else:
        lines.append("The kernel request is valid.")
    if warnings:
        lines += ["", "Warnings (nothing to fix for the request to run):", ""] + [item(p) for p in warnings]
    return "\n".join(lines) + "\n"
