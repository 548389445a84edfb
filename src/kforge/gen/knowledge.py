"""The knowledge base: scoped learnings about writing kernels for one op family, in markdown.

    entries = knowledge.load("rms_norm")                       # bundled + the user's file
    for e in knowledge.relevant(entries, gpu=fingerprint, dtype="bfloat16", triton_version="3.9.0"):
        e.unverified("3.9.0")                                   # recorded under another Triton
    knowledge.append("rms_norm", Entry(...))                    # what a generate run learned
    knowledge.record_run("rms_norm", gpu=..., best=variant, ...)  # the same, from a run's best variant

One file per op family (`family(op)`, named by the op's spec: fused_add_rms_norm shares rms_norm's):
the bundled file in `kforge/gen/knowledge/<family>.md` (shipped with the package, read-only) and
the user's file in `kforge.paths.home()/knowledge/<family>.md`, which `append` extends under a file
lock with an atomic replace. The format, one entry:

    ### [success] One program per row while the row fits in registers
    - gpu: any | dtype: any | shapes: hidden<=65536 | triton: any
    - op: rms_norm                                  (optional: only this op of the family)
    - measured: H100 bf16 4096x4096: 28.3 us, vendor 32.2 us   (optional)
    - recorded: 2026-11-22, attempt 0123abcd        (optional)

    Free text, any number of paragraphs, up to the next entry header.

Anything before the first header (a title, an introduction) is ignored. `gpu` is "any" or a
substring of the GPU name ("H100"); `dtype` "any" or a comma-separated list of torch dtype names;
`shapes` a regime in words ("decode", "hidden<=1024", "long rows"); `triton` "any" or a
comma-separated list of major.minor versions the entry was observed under.
"""
from __future__ import annotations

import ast
import dataclasses
import datetime as _dt
import enum
import math
import re
from pathlib import Path
from typing import Iterable

import torch

from kforge import paths
from kforge.errors import KforgeError
from kforge.files import atomic_write_bytes, lock_for
from kforge.gen.prompts import render
from kforge.ops import SPECS

BUNDLED_DIR = Path(__file__).resolve().parent / "knowledge"
ANY = "any"


HEADER = re.compile(r"^### \[(?P<outcome>[a-z]+)\] (?P<title>\S.*)$")
SCOPE_KEYS = ("gpu", "dtype", "shapes", "triton")
EXTRA_KEYS = ("op", "measured", "recorded")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")  # a file name: no path, no leading dot
_VERSION = re.compile(r"^\d+\.\d+$")


class KnowledgeError(KforgeError):
    """A knowledge file that does not parse, or an entry that cannot be written faithfully."""


class Outcome(str, enum.Enum):
    SUCCESS = "success"  # a pattern that worked: do this
    FAILURE = "failure"  # a pattern that failed or was slow: avoid this


class Origin(str, enum.Enum):
    BUNDLED = "bundled"  # shipped with kforge
    USER = "user"  # appended by generate runs on this machine


def family(op: str) -> str:
    """The knowledge family of `op`: its spec's `knowledge_family`, or its own name (an op that
    names none, or one not registered here: a user's op gets a file of its own)."""
    spec = SPECS.get(op)
    family_name = spec.knowledge_family if spec is not None and spec.knowledge_family is not None else op
    if not isinstance(family_name, str) or not _NAME.fullmatch(family_name):
        raise KnowledgeError(f"op name {op!r} cannot name a knowledge file")
    return family_name


def _split_list(value: str) -> tuple[str, ...]:
    """'bfloat16, float16' -> ('bfloat16', 'float16'); 'any' -> ()."""
    value = value.strip()
    if value.lower() == ANY:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


def major_minor(version: str) -> str:
    """'3.9.0' -> '3.9'; 'triton3.6' -> '3.6'; anything without digits is returned stripped."""
    m = re.search(r"(\d+)\.(\d+)", version)
    return f"{m.group(1)}.{m.group(2)}" if m else version.strip()


@dataclasses.dataclass(frozen=True)
class Entry:
    """One learning, scoped. Empty tuples mean "any". `origin` is where it was read from (not
    written to the file)."""

    title: str
    outcome: Outcome
    text: str
    gpu: str = ANY
    dtypes: tuple[str, ...] = ()
    shapes: str = ANY
    triton: tuple[str, ...] = ()  # major.minor versions it was observed under
    op: str | None = None  # one op of the family only
    measured: str | None = None
    recorded: str | None = None
    origin: Origin = dataclasses.field(default=Origin.USER, compare=False)

    def __post_init__(self) -> None:
        for name in ("title", "gpu", "shapes", "op", "measured", "recorded"):
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, getattr(self, name).strip())
        object.__setattr__(self, "outcome", Outcome(self.outcome))
        object.__setattr__(self, "text", "\n".join(self.text.splitlines()).strip())
        object.__setattr__(self, "dtypes", tuple(_dtype_name(d) for d in self.dtypes))
        object.__setattr__(self, "triton", tuple(major_minor(v) for v in self.triton))
        where = f"knowledge entry {self.title!r}"
        if not self.title or not self.text:
            raise KnowledgeError(f"{where}: needs a title and a text")
        # Scope values share one '|'-separated line; the others get a line each.
        lines = {"title": self.title, "op": self.op, "measured": self.measured, "recorded": self.recorded}
        scope = {"gpu": self.gpu, "shapes": self.shapes, **{f"dtype {d!r}": d for d in self.dtypes}}
        for name, value in [*lines.items(), *scope.items()]:
            if value is not None and ("\n" in value or "\r" in value or not value.strip()):
                raise KnowledgeError(f"{where}: {name} {value!r} must be one non-empty line")
        for name, value in scope.items():
            if "|" in value:
                raise KnowledgeError(f"{where}: {name} {value!r} may not contain '|'")
        for d in self.dtypes:
            if not isinstance(getattr(torch, d, None), torch.dtype):
                raise KnowledgeError(f"{where}: dtype {d!r} is not a torch dtype name")
        for version in self.triton:
            if not _VERSION.match(version):
                raise KnowledgeError(f"{where}: triton version {version!r} is not major.minor")
        for line in self.text.splitlines():
            if line.startswith("### "):
                raise KnowledgeError(f"{where}: its text may not contain a '### ' heading line ({line!r}): "
                                     "it would start a new entry")

    def unverified(self, triton_version: str) -> bool:
        """True when the entry was observed under other Triton versions than `triton_version`."""
        return bool(self.triton) and major_minor(triton_version) not in self.triton

    def matches(self, gpu: str | None, dtypes: Iterable[str]) -> bool:
        """Within scope for a GPU name (or a device fingerprint holding it) and any of `dtypes`.
        None / empty means "not known": everything matches."""
        if self.gpu.lower() != ANY and gpu is not None and self.gpu.lower() not in gpu.lower():
            return False
        wanted = {_dtype_name(d) for d in dtypes}
        return not self.dtypes or not wanted or bool(wanted & set(self.dtypes))

    def to_markdown(self) -> str:
        scope = " | ".join(f"{key}: {value}" for key, value in (
            ("gpu", self.gpu), ("dtype", ", ".join(self.dtypes) or ANY), ("shapes", self.shapes),
            ("triton", ", ".join(self.triton) or ANY)))
        lines = [f"### [{self.outcome.value}] {self.title.strip()}", f"- {scope}"]
        lines += [f"- {key}: {getattr(self, key)}" for key in EXTRA_KEYS if getattr(self, key) is not None]
        return "\n".join(lines) + "\n\n" + self.text + "\n"


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse(text: str, where: str = "<knowledge>", origin: Origin = Origin.USER) -> list[Entry]:
    """Entries of a knowledge file's text. Raises KnowledgeError naming `where` and the line."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("### ")]
    entries = []
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        entries.append(_parse_entry(lines[start:end], f"{where}:{start + 1}", origin))
    return entries


def _parse_entry(lines: list[str], where: str, origin: Origin) -> Entry:
    header = HEADER.match(lines[0])
    if header is None:
        raise KnowledgeError(f"{where}: an entry header reads '### [success] title' or '### [failure] title', "
                             f"got {lines[0]!r}")
    try:
        outcome = Outcome(header["outcome"])
    except ValueError:
        raise KnowledgeError(f"{where}: outcome [{header['outcome']}] is not one of "
                             f"{[o.value for o in Outcome]}") from None
    fields: dict[str, str] = {}
    body_at = 2  # after the header and the scope line
    if len(lines) < 2 or not lines[1].startswith("- "):
        raise KnowledgeError(f"{where}: the line after the header must be the scope, "
                             f"'- gpu: ... | dtype: ... | shapes: ... | triton: ...'")
    for part in lines[1][2:].split("|"):
        key, sep, value = part.partition(":")
        if not sep:
            raise KnowledgeError(f"{where}: scope part {part.strip()!r} is not 'key: value'")
        fields[key.strip()] = value.strip()
    missing = [k for k in SCOPE_KEYS if k not in fields]
    unknown = sorted(set(fields) - set(SCOPE_KEYS))
    if missing or unknown:
        raise KnowledgeError(f"{where}: the scope line needs exactly {list(SCOPE_KEYS)}; "
                             f"missing {missing}, unknown {unknown}")
    extras: dict[str, str] = {}
    for line in lines[2:]:
        key, sep, value = line[2:].partition(":") if line.startswith("- ") else ("", "", "")
        if not sep or key.strip() not in EXTRA_KEYS:
            break
        extras[key.strip()] = value.strip()
        body_at += 1
    text = "\n".join(lines[body_at:]).strip()
    try:
        return Entry(title=header["title"].strip(), outcome=outcome, text=text, gpu=fields["gpu"],
                     dtypes=_split_list(fields["dtype"]), shapes=fields["shapes"], triton=_split_list(fields["triton"]),
                     op=extras.get("op"), measured=extras.get("measured"), recorded=extras.get("recorded"),
                     origin=origin)
    except KnowledgeError as exc:
        raise KnowledgeError(f"{where}: {exc}") from None


def bundled_file(op: str) -> Path:
    return BUNDLED_DIR / f"{family(op)}.md"


def user_file(op: str) -> Path:
    return paths.home() / "knowledge" / f"{family(op)}.md"


def _read(path: Path, origin: Origin) -> list[Entry]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return parse(text, str(path), origin)


def load(op: str) -> list[Entry]:
    """Every entry for `op`: the bundled file's, then the user's, in file order, leaving out
    entries scoped to another op of the family."""
    entries = _read(bundled_file(op), Origin.BUNDLED) + _read(user_file(op), Origin.USER)
    return [e for e in entries if e.op is None or e.op == op]


def append(op: str, entry: Entry) -> Path:
    """Add `entry` to the user's file of `op`'s family (created with a title when absent), under
    the file's lock, replacing the file atomically: concurrent writers never lose an entry, and
    a writer killed midway leaves the old file. Returns the file's path."""
    path = user_file(op)
    block = entry.to_markdown()
    if len(parse(block)) != 1 or parse(block)[0] != entry:  # what is written must read back the same
        raise KnowledgeError(f"knowledge entry {entry.title!r} would not read back as written")
    with lock_for(path):
        try:
            current = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = f"# {family(op)}: learnings from kforge generate runs on this machine\n"
        parse(current, str(path))  # never extend a file that no longer parses
        atomic_write_bytes(path, (current.rstrip("\n") + "\n\n" + block).encode("utf-8"))
    return path


def relevant(entries: Iterable[Entry], gpu: str | None, dtype=None, triton_version: str | None = None) -> list[Entry]:
    """Entries within scope for `gpu` (a GPU name or device fingerprint; None: any) and `dtype`
    (a torch dtype or its name, several, or None: any), in their order. Entries observed under
    another Triton version are kept: mark them with `Entry.unverified(triton_version)`; with
    `triton_version` given, the entries verified on it come first."""
    if dtype is None:
        dtypes: tuple = ()
    elif isinstance(dtype, (str, bytes)) or not isinstance(dtype, Iterable):
        dtypes = (dtype,)
    else:
        dtypes = tuple(dtype)
    kept = [e for e in entries if e.matches(gpu, dtypes)]
    if triton_version is not None:
        kept.sort(key=lambda e: e.unverified(triton_version))  # stable: file order within each group
    return kept


def summary(source: str, limit: int = 600) -> str | None:
    """The first paragraph of a source's module docstring, on one line (None without one)."""
    try:
        doc = ast.get_docstring(ast.parse(source))
    except (SyntaxError, ValueError):
        return None
    if not doc:
        return None
    first = " ".join(doc.strip().split("\n\n")[0].split())
    return first if len(first) <= limit else first[:limit - 3].rstrip() + "..."


def record_run(op: str, *, gpu: str, dtypes: Iterable, shapes: Iterable, triton_version: str, best,
               attempts: int, accepted: int) -> Entry:
    """Append what a generate run learned about `op` to the user's knowledge file and return the
    entry: its best variant (`best`: sha256, attempt_id, source, speedup (geometric mean vs
    vendor), fraction (lowest fraction of the roofline, or None), measurements (harness
    `Measurement.to_json()` dicts)), scoped to the GPU, dtypes, shapes and Triton of the run. A
    success when the variant beat the vendor, a failure (an approach that did not) otherwise."""
    shape_text = ", ".join("x".join(str(d) for d in s) for s in shapes) or ANY
    speedup = float(best.speedup)
    measured = "; ".join(
        f"{'x'.join(str(d) for d in m['shape'])} {m['dtype']}: {m['candidate']['p50_us']:.2f} us against vendor "
        f"{m['vendor']['p50_us']:.2f} us ({m['speedup_vs_vendor']:.2f}x)" for m in best.measurements) or None
    sha = best.sha256[:12]
    fraction = getattr(best, "fraction", None)
    text = render("learned_run", gpu=gpu, triton=triton_version, attempts=attempts, accepted=accepted, sha=sha,
                  attempt_id=best.attempt_id, speedup=f"{speedup:.2f}",
                  fraction=None if fraction is None else f"{fraction:.0%}", summary=summary(best.source))
    entry = Entry(title=render("learned_run_title", sha=sha, speedup=f"{speedup:.2f}", shapes=shape_text),
                  outcome=Outcome.SUCCESS if math.isfinite(speedup) and speedup > 1.0 else Outcome.FAILURE,
                  text=text, gpu=gpu.replace("|", "/") or ANY, dtypes=tuple(_dtype_name(d) for d in dtypes),
                  shapes=shape_text, triton=(major_minor(triton_version),) if _VERSION.match(major_minor(triton_version)) else (),
                  op=op, measured=measured,
                  recorded=f"{_dt.date.today().isoformat()}, attempt {best.attempt_id}")
    append(op, entry)
    return entry
