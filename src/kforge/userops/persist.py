"""User ops on disk: `$KFORGE_HOME/ops/<name>/` holds definition.json and source.py (the op's
functions and what they use, sliced from the defining file: `kforge.userops.slicing`; files
persisted before the slicing are whole copies and still load), so another process (a sandboxed
evaluation worker, a later session) loads the op by name (`kforge.userops.load`).

definition.json is read back as untrusted data: a file kforge did not write, or one rewritten by
code that shares this user's files, gives a `UserOpError`, never a crash or a wrong op.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Callable

from kforge import paths
from kforge.files import CorruptFile, atomic_write_bytes, read_json
from kforge.specs import OpSpec
from kforge.userops.build import DTYPE_NAMES, OpKind, UserOpError, check_name
from kforge.userops.slicing import slice_source

MAX_MANIFEST_BYTES = 1 << 20  # a definition is a few hundred bytes; its source is a file of its own
_MANIFEST_TYPES = {"kind": str, "schema": str, "shapes": list, "dtypes": list, "problem_dims": list,
                   "exact_dims": list, "description": str, "fixed_shapes": bool, "tolerance_scale": (int, float),
                   "reference": str, "make_inputs": str}
# `define_op` options a definition.json keeps; the others are functions, which only the op's file holds.
KEPT = ("dtypes", "problem_dims", "exact_dims", "description", "fixed_shapes", "tolerance_scale")


def ops_dir() -> Path:
    return paths.home() / "ops"


def persisted() -> list[str]:
    """Names of the user ops persisted under this KFORGE_HOME."""
    folder = ops_dir()
    return sorted(p.name for p in folder.iterdir() if (p / "definition.json").is_file()) if folder.is_dir() else []


def write(name: str, manifest: dict) -> None:
    """Persist `manifest` (its "source" goes to source.py, the rest to definition.json)."""
    folder = ops_dir() / check_name(name)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "source.py", manifest.pop("source").encode())
    atomic_write_bytes(folder / "definition.json", (json.dumps(manifest, indent=1) + "\n").encode())


def function_manifest(spec: OpSpec, reference: Callable, make_inputs: Callable, options: dict) -> dict:
    """The manifest of an op `define_op` registers from two module-level functions of one file."""
    unkept = sorted(set(options) - set(KEPT) - {"reference_source"})
    if unkept:
        raise UserOpError(f"op {spec.name!r}: {', '.join(unkept)} cannot be persisted (functions); "
                          "define them in the op's file and load it there, or pass persist=False")
    files = set()
    for fn in (reference, make_inputs):
        path = inspect.getsourcefile(fn) if inspect.isfunction(fn) else None
        if path is None or fn.__qualname__ != fn.__name__ or not Path(path).is_file():
            raise UserOpError(f"op {spec.name!r}: to persist it, {getattr(fn, '__name__', fn)!r} must be a module-level "
                              "function of a .py file (or pass persist=False)")
        files.add(path)
    if len(files) != 1:
        raise UserOpError(f"op {spec.name!r}: reference and make_inputs must come from one file to be persisted")
    return {"kind": OpKind.FUNCTION.value, "trusted": True, "name": spec.name, "schema": spec.schema,
            "reference": reference.__name__,
            "make_inputs": make_inputs.__name__, "shapes": [list(s) for s in spec.shape_sets["smoke"]],
            "dtypes": [str(d).removeprefix("torch.") for d in spec.dtypes], "problem_dims": list(spec.problem_dims),
            "exact_dims": list(spec.exact_dims), "description": spec.description, "fixed_shapes": spec.fixed_shapes,
            "tolerance_scale": float(options.get("tolerance_scale", 1.0)),
            "source": slice_source(Path(files.pop()).read_text(), (reference.__name__, make_inputs.__name__),
                                   op=spec.name)}


def differences(name: str, manifest: dict) -> list[str]:
    """What differs between the persisted op `name` and `manifest` (a `function_manifest`): the
    fields by name, and "the code" when the functions or what they use differ. Empty: the same op."""
    on_disk = read_manifest(name)
    fields = sorted(k for k in manifest if k != "source" and on_disk.get(k) != manifest[k])
    try:
        code = (ops_dir() / name / "source.py").read_text()
    except OSError:
        code = None
    return fields + ([] if code == manifest["source"] else ["the code of its functions or of what they use"])


def _manifest_problem(manifest: Any) -> str | None:
    """Why a definition.json read from disk cannot be used, or None: its fields' types (a file kforge
    did not write, or one rewritten by code that shares this user's files, must not crash `load`)."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    for key, kind in _MANIFEST_TYPES.items():
        if key in manifest and (not isinstance(manifest[key], kind) or isinstance(manifest[key], bool) != (kind is bool)):
            return f"{key!r} has the wrong type ({type(manifest[key]).__name__})"
    if manifest.get("kind", OpKind.FUNCTION.value) not in {k.value for k in OpKind}:
        return f"'kind' is {manifest['kind']!r}, not one of {', '.join(k.value for k in OpKind)}"
    # A trusted KernelBench op is rebuilt from its file; every other kind is built from these fields.
    needed = ("schema",) if manifest.get("kind") == OpKind.KERNELBENCH.value and manifest.get("trusted") is True else (
        "schema", "shapes", "dtypes", "problem_dims", "exact_dims")
    for key in needed:
        if key not in manifest:
            return f"{key!r} is missing"
    if not all(isinstance(d, str) and d in DTYPE_NAMES for d in manifest.get("dtypes", [])):
        return f"dtypes must be among {', '.join(DTYPE_NAMES)}"
    if not all(isinstance(d, str) for d in manifest.get("problem_dims", []) + manifest.get("exact_dims", [])):
        return "problem_dims and exact_dims must be lists of names"
    return None


def read_manifest(name: str) -> dict:
    """The persisted op's definition.json, its fields' types checked; raises `UserOpError`."""
    folder = ops_dir() / check_name(name)  # a name from a record or a request: never a path
    try:
        manifest = read_json(folder / "definition.json", max_bytes=MAX_MANIFEST_BYTES)
    except (OSError, CorruptFile) as exc:
        raise UserOpError(f"op {name!r} is not persisted under {ops_dir()} ({exc})") from None
    problem = _manifest_problem(manifest)
    if problem is not None:
        raise UserOpError(f"op {name!r}: {folder / 'definition.json'} is not a kforge op definition: {problem}")
    return manifest


def request_source(name: str) -> str:
    """The persisted op `name` as a kernel request's reference (what another machine's kforge
    defines the op from): its source.py, with `reference` and `make_inputs` defined under those
    names where the op's own functions have others. A KernelBench file is its own reference."""
    manifest = read_manifest(name)
    source = (ops_dir() / check_name(name) / "source.py").read_text()
    if kind_of(manifest) is not OpKind.FUNCTION:
        return source
    aliases = []
    if manifest["reference"] != "reference":
        aliases.append(f"def reference(*args):\n    return {manifest['reference']}(*args)\n")
    if manifest["make_inputs"] != "make_inputs":
        aliases.append(f"def make_inputs(shape, dtype, device, seed):\n"
                       f"    return {manifest['make_inputs']}(shape, dtype, device, seed)\n")
    return source.rstrip("\n") + "\n\n\n" + "\n\n".join(aliases) if aliases else source


def kind_of(manifest: dict) -> OpKind:
    """The kind a checked manifest records (older files without one define functions)."""
    return OpKind(manifest.get("kind", OpKind.FUNCTION.value))
