"""The kernel store: candidate sources addressed by the sha256 of their exact bytes.

Layout under `<KFORGE_HOME>/kernels/` (see `kforge.paths.home`):
    <sha[:2]>/<sha>.py     the source, byte for byte as generated
    <sha[:2]>/<sha>.json   metadata: op, provider, parent sha, attempt id, created, versions
Both are written once, by exclusive create (write a temp file, fsync, hard-link it into place):
the first writer wins, so concurrent puts of the same source leave one file and one metadata
record, and a reader never sees half a file.

Every read re-hashes the file on disk: a kernel edited after it was verified raises
`KernelIntegrityError` (the router then switches its record off and serves vendor). Before a
module is imported, its bytes pass the static check again (`kforge.checks.static`, once per sha
per process): a kernel that fails it raises `KernelRejectedError` and is never imported. A
module is imported from the bytes that were hashed, never from a bytecode cache (see
`kforge.candidate`).

Verdicts: `<sha[:2]>/<sha>.verdict` says this kforge's evaluator accepted the kernel for an op on
each device it names (with a summary of the evidence), authenticated by an HMAC-SHA256 keyed by
`<KFORGE_HOME>/verdict.key` (32 random bytes, created once with mode 0600 by the first verdict
written). The Triton backend serves a stored
kernel only with a valid verdict, so a kernel and record planted in the store or copied from
another machine (where the key differs) are not served; the kernels bundled with the package are
trusted as shipped.

The bundled kernels (`BundledKernels`, `kforge/tables/kernels/`) are a read-only store whose
metadata may name a catalog seed (`"catalog": "<file>"`) in place of a copy of its bytes: the
package ships each seed once, and the hash check is the same (a seed edited by one byte no longer
hashes to the sha256 its records name, and is refused).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import tempfile
import threading
import types
from pathlib import Path
from typing import Any, Iterator

from kforge import paths
from kforge.catalog import CATALOG_DIR
from kforge.candidate import Candidate, candidate_from_module, load_module
from kforge.device import installed_version
from kforge.errors import KforgeError
from kforge.files import atomic_write_bytes, fsync_dir, lock_for, read_json
from kforge.records import op_name_problem
from kforge.specs import OpSpec
from kforge.version import __version__

SHA_RE = re.compile(r"[0-9a-f]{64}")
MAX_META_BYTES = 1 << 16  # a kernel's metadata is a few hundred bytes
META_KIND = "kforge-kernel"
VERDICT_KIND = "kforge-verdict"
KEY_BYTES = 32
MAX_VERDICT_BYTES = 1 << 16

_modules_lock = threading.Lock()
_modules: dict[str, types.ModuleType] = {}  # sha -> module, imported once per process


class KernelIntegrityError(KforgeError):
    """A stored kernel whose file is missing or no longer hashes to its name."""

    def __init__(self, sha: str, path: Path, problem: str):
        self.sha = sha
        self.path = path
        super().__init__(f"stored kernel {sha} at {path}: {problem}; refusing to load it")


class KernelRejectedError(KforgeError):
    """A stored kernel that fails the static check: never imported."""

    def __init__(self, sha: str, path: Path, finding):
        self.sha = sha
        self.path = path
        self.finding = finding
        super().__init__(f"stored kernel {sha} at {path} fails the static check ({finding}); refusing to import it")


def sha256_of(source: str | bytes) -> str:
    data = source.encode("utf-8") if isinstance(source, str) else source
    return hashlib.sha256(data).hexdigest()


def module_name(sha: str) -> str:
    return f"kforge_kernel_{sha[:16]}"


@dataclasses.dataclass(frozen=True)
class StoredKernel:
    sha256: str
    path: Path  # the source file
    op: str
    provider: str
    parent: str | None  # sha256 of the kernel this one was derived from
    attempt_id: str | None
    created: str  # ISO 8601, UTC
    versions: dict[str, str]  # kforge, torch, triton at the time it was stored

    @property
    def impl_id(self) -> str:
        """The implementation id the router and the score table use for this kernel."""
        return f"triton:{self.sha256[:12]}"

    def source(self) -> str:
        """The source text, re-checked against the hash."""
        return _verified_bytes(self.sha256, self.path).decode("utf-8")

    def to_json(self) -> dict:
        return {"kind": META_KIND, "sha256": self.sha256, "op": self.op, "provider": self.provider,
                "parent": self.parent, "attempt_id": self.attempt_id, "created": self.created,
                "versions": dict(self.versions)}


def _versions() -> dict[str, str]:
    return {"kforge": __version__, "torch": installed_version("torch") or "none",
            "triton": installed_version("triton") or "none"}


def _verified_bytes(sha: str, path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KernelIntegrityError(sha, path, "the source file is missing") from None
    except OSError as exc:
        raise KernelIntegrityError(sha, path, f"the source file cannot be read ({exc})") from None
    actual = sha256_of(data)
    if actual != sha:
        raise KernelIntegrityError(sha, path, f"edited on disk: its content now hashes to {actual}")
    return data


def verdict_key(create: bool) -> bytes | None:
    """This KFORGE_HOME's verdict key; created (mode 0600, exclusive create) when `create` and
    missing. None when missing, or when others could read or replace it (group/world access,
    another owner, not a regular file): such a key proves nothing."""
    path = paths.home() / "verdict.key"
    if create and not path.exists():
        # Written whole to a temp file (mkstemp: mode 0600) and hard-linked into place, so no
        # reader ever sees a short key; the first creator wins.
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".verdict.key.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(KEY_BYTES))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
        fsync_dir(path.parent)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        key = f.read(KEY_BYTES + 1)
    if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077 or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
        return None
    return key if len(key) == KEY_BYTES else None


def _mac(key: bytes, body: dict) -> str:
    return hmac.new(key, json.dumps(body, sort_keys=True, separators=(",", ":")).encode(), hashlib.sha256).hexdigest()


def _write_once(path: Path, data: bytes) -> bool:
    """Create `path` holding `data` unless it exists. Atomic and durable; True when this call
    created it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if `path` exists: the first writer wins
            created = True
        except FileExistsError:
            created = False
        except OSError:  # a file system without hard links: last writer wins, still atomic
            created = not path.exists()
            if created:
                os.replace(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:  # moved into place by the fallback
            pass
    if created:
        fsync_dir(path.parent)
    return created


class KernelStore:
    """Content-addressed kernel sources under `root` (default `<KFORGE_HOME>/kernels`)."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else paths.home() / "kernels"

    def source_path(self, sha: str) -> Path:
        return self.root / sha[:2] / f"{sha}.py"

    def meta_path(self, sha: str) -> Path:
        return self.root / sha[:2] / f"{sha}.json"

    def put(self, source: str, *, op: str, provider: str, parent: str | None = None,
            attempt_id: str | None = None) -> StoredKernel:
        """Store `source` (idempotent: the same bytes give the same kernel, and the first put's
        metadata is kept). A stored copy edited on disk is restored from `source`."""
        data = source.encode("utf-8")
        sha = sha256_of(data)
        if parent is not None and not SHA_RE.fullmatch(parent):
            raise ValueError(f"parent must be a kernel sha256 (64 hex digits), got {parent!r}")
        meta = StoredKernel(sha256=sha, path=self.source_path(sha), op=op, provider=provider, parent=parent,
                            attempt_id=attempt_id,
                            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                            versions=_versions())
        # Metadata first: a source file without metadata is never visible.
        _write_once(self.meta_path(sha), (json.dumps(meta.to_json(), indent=1, sort_keys=True) + "\n").encode())
        if not _write_once(self.source_path(sha), data):
            try:
                _verified_bytes(sha, self.source_path(sha))
            except KernelIntegrityError:
                atomic_write_bytes(self.source_path(sha), data)
        return self.get(sha)

    def get(self, sha: str) -> StoredKernel:
        """The stored kernel `sha` (a full sha256). Raises KernelIntegrityError when its source is
        missing or edited, or its metadata is missing or unreadable."""
        sha = self._check_sha(sha)
        path = self.source_path(sha)
        _verified_bytes(sha, path)
        return self._read_meta(sha, path)

    def load(self, sha: str, spec: OpSpec | None = None) -> Candidate:
        """The stored kernel `sha` imported as a candidate (module `kforge_kernel_<sha[:16]>`,
        imported once per process), checked against `spec` when given. The file is re-hashed on
        every call, cached or not, and statically checked before its first import. Raises
        KernelIntegrityError, KernelRejectedError, or CandidateError for a file that does not
        follow the candidate contract."""
        from kforge.checks.static import check_stored  # imports triton: only when a kernel loads

        sha = self._check_sha(sha)
        path = self.source_path(sha)
        data = _verified_bytes(sha, path)
        findings = check_stored(sha, data, spec)
        if findings:
            raise KernelRejectedError(sha, path, findings[0])
        with _modules_lock:
            module = _modules.get(sha)
            if module is None:
                module = load_module(path, module_name(sha), source=data)
                _modules[sha] = module
        return candidate_from_module(module, spec)

    def verdict_path(self, sha: str) -> Path:
        return self.root / sha[:2] / f"{sha}.verdict"

    def put_verdict(self, sha: str, op: str, device: str, evidence: dict) -> Path:
        """Record that this kforge's evaluator accepted kernel `sha` for `op` on `device` (the
        fingerprint string records are keyed by; `evidence`: a JSON summary of what was verified).
        Only the coordinator calls this, never a worker. Verdicts on other devices are kept; one
        on the same device is replaced."""
        self.get(sha)  # stored and intact
        key = verdict_key(create=True)
        if key is None:
            raise KforgeError(f"verdict for {sha}: {paths.home() / 'verdict.key'} is not a private key file of "
                              f"{KEY_BYTES} bytes (mode 0600, owned by this user); remove it to make a new one")
        path = self.verdict_path(sha)
        with lock_for(path):
            old, problem = self._read_verdict(sha)
            devices = dict(old["devices"]) if problem is None and old["op"] == op else {}
            devices[device] = evidence
            body = {"kind": VERDICT_KIND, "sha256": sha, "op": op, "devices": devices,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
            data = {**body, "hmac": _mac(key, body)}
            atomic_write_bytes(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
        return path

    def verdict_problem(self, sha: str, op: str, device: str | None = None) -> str | None:
        """None when kernel `sha` has a valid verdict of this kforge for `op` (on `device`, when
        given: a record keyed to a device the kernel was never verified on is not served); else
        why not, as a sentence for the router's warning."""
        body, problem = self._read_verdict(self._check_sha(sha))
        if problem is not None:
            return problem
        path = self.verdict_path(sha)
        if body["op"] != op:
            return f"its verdict {path} is for {body['op']!r} kernel {body['sha256']}, not this {op!r} kernel"
        if device is not None and device not in body["devices"]:
            return f"its verdict {path} covers {sorted(body['devices'])}, not {device}"
        return None

    def _read_verdict(self, sha: str) -> tuple[dict | None, str | None]:
        path = self.verdict_path(sha)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_VERDICT_BYTES + 1)
        except FileNotFoundError:
            return None, f"it has no verdict from this kforge's evaluator ({path} is missing)"
        except OSError as exc:
            return None, f"its verdict {path} cannot be read ({exc.strerror or exc})"
        try:
            if len(raw) > MAX_VERDICT_BYTES:
                raise ValueError("too large")
            data = json.loads(raw)
            body = {k: data[k] for k in ("kind", "sha256", "op", "devices", "created")}
            mac = data["hmac"]
            if not isinstance(body["devices"], dict):
                raise TypeError("devices is not an object")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            return None, f"its verdict {path} is unreadable ({type(exc).__name__})"
        key = verdict_key(create=False)
        if key is None:
            return None, f"its verdict {path} cannot be checked: this kforge has no usable {paths.home() / 'verdict.key'}"
        if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(key, body)):
            return None, f"its verdict {path} was not written by this kforge's evaluator (bad signature)"
        if body["kind"] != VERDICT_KIND or body["sha256"] != sha:
            return None, f"its verdict {path} is for {body['op']!r} kernel {body['sha256']}, not this kernel"
        return body, None

    def list(self, op: str | None = None) -> list[StoredKernel]:
        """Every stored kernel (of `op` when given) whose metadata reads, oldest first. Sources are
        not re-hashed here; `get` and `load` do that."""
        out = []
        for meta_path in self._meta_files():
            sha = meta_path.stem
            try:
                kernel = self._read_meta(sha, self.source_path(sha))
            except KernelIntegrityError:
                continue
            if op is None or kernel.op == op:
                out.append(kernel)
        return sorted(out, key=lambda k: (k.created, k.sha256))

    def _meta_files(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return iter(())
        return (p for p in sorted(self.root.glob("??/*.json")) if SHA_RE.fullmatch(p.stem))

    def _read_meta(self, sha: str, path: Path) -> StoredKernel:
        meta_path = self.meta_path(sha)
        try:
            data: Any = read_json(meta_path, max_bytes=MAX_META_BYTES)
            if not isinstance(data, dict) or data.get("sha256") != sha:
                raise ValueError("not this kernel's metadata")
            parent, attempt_id, versions = data.get("parent"), data.get("attempt_id"), data.get("versions", {})
            if (op_name_problem(data.get("op")) is not None or not isinstance(data.get("provider"), str)
                    or not (parent is None or (isinstance(parent, str) and SHA_RE.fullmatch(parent)))
                    or not (attempt_id is None or isinstance(attempt_id, str))
                    or not isinstance(data.get("created", ""), str) or not isinstance(versions, dict)
                    or not all(isinstance(v, str) for v in versions.values())):
                raise ValueError("a field has the wrong type or value")
            return StoredKernel(sha256=sha, path=path, op=data["op"], provider=data["provider"],
                                parent=parent, attempt_id=attempt_id,
                                created=data.get("created", ""), versions=dict(versions))
        except FileNotFoundError:
            raise KernelIntegrityError(sha, meta_path, "its metadata file is missing") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KernelIntegrityError(sha, meta_path, f"its metadata is unreadable ({exc})") from None

    @staticmethod
    def _check_sha(sha: str) -> str:
        if not isinstance(sha, str) or not SHA_RE.fullmatch(sha):
            raise ValueError(f"a stored kernel is named by its full sha256 (64 lowercase hex digits), got {sha!r}")
        return sha


def catalog_seed(sha: str, catalog_dir: Path | None = None) -> str | None:
    """The file name of the catalog seed whose bytes hash to `sha` (in `catalog_dir`, default the
    package's catalog), or None: what the bundled table names in place of a copy."""
    root = Path(catalog_dir) if catalog_dir is not None else CATALOG_DIR
    return next((p.name for p in sorted(root.glob("*.py")) if p.name != "__init__.py"
                 and sha256_of(p.read_bytes()) == sha), None)


class BundledKernels(KernelStore):
    """The kernels the bundled table's Triton records name (`kforge.paths.bundled_kernel_dir`).
    Each has its metadata `<sha[:2]>/<sha>.json` here; its source is the file beside it, or the
    catalog seed its metadata names by `"catalog": "<file name>"` (no second copy of a seed). The
    catalog directory is `catalog_dir` (default: the package's)."""

    def __init__(self, root: Path, catalog_dir: Path | None = None):
        super().__init__(root)
        self.catalog_dir = Path(catalog_dir) if catalog_dir is not None else CATALOG_DIR

    def holds(self, sha: str) -> bool:
        """Whether the bundled table ships kernel `sha` (intact or not: loading re-hashes it)."""
        return self.meta_path(sha).exists() or super().source_path(sha).exists()

    def catalog_file(self, sha: str) -> str | None:
        """The catalog seed file kernel `sha`'s metadata names, or None (its source is a copy)."""
        try:
            data = read_json(self.meta_path(sha), max_bytes=MAX_META_BYTES)
        except (OSError, ValueError):
            return None  # no metadata or unreadable: `get` and `load` say which
        name = data.get("catalog") if isinstance(data, dict) else None
        if name is None:
            return None
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_]+\.py", name) or name == "__init__.py":
            # A reference out of the catalog directory (a path, a dotfile) is never followed.
            raise KernelIntegrityError(sha, self.meta_path(sha), f"its metadata names {name!r}, not a catalog seed file")
        return name

    def source_path(self, sha: str) -> Path:
        name = self.catalog_file(sha)
        return self.catalog_dir / name if name is not None else super().source_path(sha)

    def put(self, source: str, *, op: str, provider: str, parent: str | None = None,
            attempt_id: str | None = None) -> StoredKernel:
        """Bundle `source`: a catalog seed's exact bytes by reference (metadata naming the seed),
        any other kernel as a copy. The first put's metadata is kept."""
        sha = sha256_of(source)
        seed = catalog_seed(sha, self.catalog_dir)
        if seed is None:
            return super().put(source, op=op, provider=provider, parent=parent, attempt_id=attempt_id)
        meta = StoredKernel(sha256=sha, path=self.catalog_dir / seed, op=op, provider=provider, parent=parent,
                            attempt_id=attempt_id,
                            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                            versions=_versions())
        body = {**meta.to_json(), "catalog": seed}
        _write_once(self.meta_path(sha), (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())
        return self.get(sha)
