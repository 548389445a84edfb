"""The candidate contract: what a kernel file must define to be evaluated, stored and routed.

A candidate is one Python source file that defines
  - `forward(...)`: the op's reference signature and return value (same outputs, dtypes, shapes);
    it allocates its outputs and launches its kernels;
  - the `@triton.jit` kernels it launches;
  - optionally `DOMAIN = {...}`: where it is valid, in the JSON form of `kforge.records.Domain`:
        {"dtypes": ["bfloat16,bfloat16", ...] or None,   # dtype signatures, one per tensor argument
         "contiguous": True, "align": 16,                # every tensor argument
         "dims": {"hidden": [1, 65536]}}                 # the op's problem dims, inclusive bounds
    Without it the candidate claims every call the op accepts.
Nothing else is required of it.

Candidates are imported from real files (Triton's JIT reads a kernel's source from its file on
GPU; `exec` of a string works in the interpreter only), never through bytecode caches: the module
runs exactly the bytes it was given, and Triton sees the same bytes (see `load_module`).
"""
from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.util
import inspect
import linecache
import sys
import threading
import types
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from kforge.errors import KforgeError
from kforge.records import Domain
from kforge.specs import OpSpec

DOMAIN_KEYS = ("dtypes", "contiguous", "align", "dims")

_import_lock = threading.RLock()  # re-entrant: a candidate may load another while importing


class CandidateError(KforgeError):
    """A candidate file that does not follow the contract (no forward, bad DOMAIN, import error)."""


class CandidateImportError(CandidateError):
    """Importing the candidate's module raised (its cause): a syntax, name or compile error at import."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    forward: Callable[..., Any]
    domain: Domain
    module: types.ModuleType
    path: Path


class _VerifiedSourceLoader(importlib.abc.Loader):
    """Runs the module from bytes already read (and, in the store, hash-checked), never from a
    .pyc: a stale or edited bytecode file next to the source would run code nobody verified."""

    def __init__(self, path: Path, source: bytes):
        self.path = path
        self.source = source

    def create_module(self, spec: OpSpec):
        return None  # the default module object

    def exec_module(self, module) -> None:
        # The decoded text, not the bytes: compile() honours a coding declaration in bytes, so
        # "# coding: utf_7" would run other code than the UTF-8 text that was checked.
        code = compile(self.source.decode("utf-8"), str(self.path), "exec", dont_inherit=True)
        exec(code, module.__dict__)

    def get_source(self, fullname: str) -> str:
        return self.source.decode("utf-8")


def _prime_linecache(path: Path, source: bytes) -> None:
    """Make `inspect.getsource` (which Triton's JIT and interpreter use to read a kernel) see
    exactly `source` for `path`: `linecache.checkcache` never re-reads an entry whose mtime is
    None (only `linecache.clearcache()` drops it; the JIT has read its source by then, at
    decoration, though the interpreter reads it at first launch)."""
    text = source.decode("utf-8")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    linecache.cache[str(path)] = (len(text), None, lines, str(path))


def load_module(path: Path, module_name: str, *, source: bytes | None = None) -> types.ModuleType:
    """Import the candidate file at `path` as `module_name` (registered in `sys.modules`).

    `source`, when given, is the file's content as already read and checked by the caller; the
    module runs those bytes and Triton reads them, whatever the file holds by then. A module of
    that name already imported is returned as it is (content-addressed names never change
    meaning); a name taken by another file is an error. Raises CandidateError when the file is
    missing or fails to import."""
    path = Path(path).resolve()
    with _import_lock:
        existing = sys.modules.get(module_name)
        if existing is not None:
            if getattr(existing, "__file__", None) != str(path):
                raise CandidateError(f"candidate {path}: module name {module_name!r} is already taken by "
                                     f"{getattr(existing, '__file__', None) or existing!r}")
            return existing
        if source is None:
            try:
                source = path.read_bytes()
            except OSError as exc:
                raise CandidateError(f"candidate {path}: cannot read it: {exc}") from None
        try:
            source.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CandidateError(f"candidate {path}: not UTF-8 text: {exc}") from None
        spec = importlib.util.spec_from_file_location(module_name, path,
                                                      loader=_VerifiedSourceLoader(path, source))
        module = importlib.util.module_from_spec(spec)
        _prime_linecache(path, source)
        sys.modules[module_name] = module  # dataclasses and Triton look modules up by name
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:
            sys.modules.pop(module_name, None)
            if isinstance(exc, Exception):
                raise CandidateImportError(f"candidate {path}: import failed: {type(exc).__name__}: {exc}") from exc
            raise
        return module


def parse_domain(raw: Any, where: str = "DOMAIN") -> Domain:
    """A `Domain` from its JSON form, refusing unknown keys and wrong types with a clear error."""
    if raw is None:
        return Domain()
    if not isinstance(raw, Mapping):
        raise CandidateError(f"{where} must be a dict, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(DOMAIN_KEYS))
    if unknown:
        raise CandidateError(f"{where} has unknown keys {unknown}; valid: {list(DOMAIN_KEYS)}")
    dtypes = raw.get("dtypes")
    if dtypes is not None:
        if isinstance(dtypes, str) or not all(isinstance(d, str) for d in dtypes):
            raise CandidateError(f"{where}['dtypes'] must be a list of dtype signatures like "
                                 f"'bfloat16,bfloat16', or None; got {dtypes!r}")
        for signature in dtypes:
            for name in signature.split(","):
                if not isinstance(getattr(torch, name, None), torch.dtype):
                    raise CandidateError(f"{where}['dtypes']: {name!r} in {signature!r} is not a torch dtype")
    if "contiguous" in raw and not isinstance(raw["contiguous"], bool):
        raise CandidateError(f"{where}['contiguous'] must be True or False, got {raw['contiguous']!r}")
    if "align" in raw and (isinstance(raw["align"], bool) or not isinstance(raw["align"], int)):
        raise CandidateError(f"{where}['align'] must be an int (1, 2, 4, 8 or 16), got {raw['align']!r}")
    dims = raw.get("dims", {})
    if not isinstance(dims, Mapping):
        raise CandidateError(f"{where}['dims'] must be a dict of name -> [lo, hi], got {dims!r}")
    for name, bounds in dims.items():
        if (not isinstance(bounds, (list, tuple)) or len(bounds) != 2
                or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)):
            raise CandidateError(f"{where}['dims'][{name!r}] must be [lo, hi] integers, got {bounds!r}")
    try:
        return Domain.from_json(raw)
    except (TypeError, ValueError) as exc:
        raise CandidateError(f"{where}: {exc}") from None


def check_against_spec(domain: Domain, forward: Callable, spec: OpSpec, where: str) -> None:
    """The candidate fits `spec`: forward takes the op's arguments, DOMAIN names its dims and
    gives one dtype per tensor argument."""
    try:
        inspect.signature(forward).bind(*spec.arg_names)
    except TypeError as exc:
        raise CandidateError(f"{where}: forward cannot take {spec.name}'s arguments "
                             f"({', '.join(spec.arg_names)}): {exc}") from None
    except ValueError:  # no signature (a builtin): nothing to check
        pass
    unknown = sorted(set(domain.dims) - set(spec.problem_dims))
    if unknown:
        raise CandidateError(f"{where}: DOMAIN dims {unknown} are not dims of {spec.name}; "
                             f"valid: {list(spec.problem_dims)}")
    for signature in domain.dtypes or ():
        if len(signature.split(",")) != len(spec.tensor_args):
            raise CandidateError(f"{where}: DOMAIN dtype signature {signature!r} needs one dtype per tensor "
                                 f"argument of {spec.name} ({len(spec.tensor_args)})")


def candidate_from_module(module: types.ModuleType, spec: OpSpec | None = None) -> Candidate:
    """Check `module` against the contract (and against `spec` when given) and wrap it."""
    path = Path(getattr(module, "__file__", "") or "<unknown>")
    where = f"candidate {path}"
    forward = getattr(module, "forward", None)
    if forward is None:
        raise CandidateError(f"{where}: defines no forward(...)")
    if not callable(forward):
        raise CandidateError(f"{where}: forward is a {type(forward).__name__}, not a function")
    domain = parse_domain(getattr(module, "DOMAIN", None), f"{where}: DOMAIN")
    if spec is not None:
        check_against_spec(domain, forward, spec, where)
    return Candidate(forward=forward, domain=domain, module=module, path=path)


def load_candidate(path: Path, module_name: str, spec: OpSpec | None = None) -> Candidate:
    """`load_module` then `candidate_from_module`."""
    return candidate_from_module(load_module(path, module_name), spec)


def domain_exceeds(inner: Domain, outer: Domain) -> str | None:
    """Why `inner` (a record's verified domain) claims calls `outer` (the kernel's own DOMAIN)
    excludes, or None when every call inside `inner` is inside `outer`."""
    if outer.dtypes is not None:
        if inner.dtypes is None:
            return f"accepts every dtype, the kernel only {list(outer.dtypes)}"
        extra = sorted(set(inner.dtypes) - set(outer.dtypes))
        if extra:
            return f"accepts dtypes {extra} the kernel does not"
    if outer.contiguous and not inner.contiguous:
        return "accepts non-contiguous inputs, the kernel needs contiguous ones"
    if inner.align < outer.align:
        return f"accepts {inner.align}-byte alignment, the kernel needs {outer.align}"
    for name, (lo, hi) in outer.dims.items():
        if name not in inner.dims:
            return f"does not bound {name}, the kernel needs {name} in [{lo}, {hi}]"
        ilo, ihi = inner.dims[name]
        if ilo < lo or ihi > hi:
            return f"accepts {name} in [{ilo}, {ihi}], the kernel only [{lo}, {hi}]"
    return None
