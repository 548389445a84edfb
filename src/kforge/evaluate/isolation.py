"""What isolates a sandboxed worker from the machine: bubblewrap when it can run, and the rules for
when it cannot. Coordinator side only (the worker never imports this).

    iso = probe()              # Isolation(level=Level.BWRAP, ...) or Level.PROCESS with the reason
    argv = bwrap_argv(iso.bwrap, command, work=..., env=..., cuda=False, sys_path=[...])

Under bwrap (`Level.BWRAP`) a worker sees a read-only root made of /usr, /etc, /lib*, the Python
prefixes, site-packages, the kforge source and the sys.path entries it was handed; the user's HOME,
KFORGE_HOME, the user data dir and KFORGE_TABLE are not visible; its private scratch dir (also its
HOME, TMPDIR, /tmp and a fresh KFORGE_HOME) is the only writable place; it has no network, its own
PID namespace (a daemon it starts dies with it, and it dies with its coordinator), a new session,
no capabilities, a cleared environment set explicitly, its own /proc and a minimal /dev (plus the
GPU device nodes, /sys and the driver's /proc entries when the task uses CUDA).

Without bwrap (`Level.PROCESS`: missing, or user namespaces refused) a worker is a plain process
with a filtered environment and limits: its code can read and write what the user can. Untrusted
code is then refused (`SandboxUnavailable`) unless the user opts out with `--unsafe-no-sandbox` or
KFORGE_UNSAFE_NO_SANDBOX=1; the catalog's own seeds (byte-identical to a file of kforge/catalog/)
are trusted and run either way.
"""
from __future__ import annotations

import dataclasses
import enum
import fcntl
import functools
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, Mapping

from kforge import paths
from kforge.errors import KforgeError

UNSAFE_ENV = "KFORGE_UNSAFE_NO_SANDBOX"
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: `sudo apt-get install -y bubblewrap`; Fedora: "
                "`sudo dnf install bubblewrap`; `bash scripts/setup.sh` does it when run as root), and allow "
                "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, or on Ubuntu 24.04+ "
                "kernel.apparmor_restrict_unprivileged_userns=0)")
SOURCE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding the kforge package
SYSTEM_DIRS = ("/usr", "/etc")
LINK_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
STALE_AFTER_S = 30.0  # an unlocked scratch dir younger than this may be one being set up right now


class Level(str, enum.Enum):
    BWRAP = "bwrap"      # namespaces: read-only root, private scratch, no network, own PID namespace
    PROCESS = "process"  # a plain child process: environment filter, limits, nothing else


class SandboxUnavailable(KforgeError, RuntimeError):
    """Untrusted code would run without bwrap and the user did not opt out."""


@dataclasses.dataclass(frozen=True)
class Isolation:
    """What isolation workers get here. reason: why bwrap is not in force (None when it is)."""

    level: Level
    bwrap: str | None = None
    version: str | None = None
    reason: str | None = None

    @property
    def guarantees(self) -> tuple[str, ...]:
        if self.level is Level.BWRAP:
            return ("read-only root", "HOME, KFORGE_HOME and the user data dir hidden",
                    "private scratch dir the only writable place", "no network", "own PID namespace, dies with "
                    "the coordinator", "new session", "no capabilities", "cleared environment",
                    "memory and wall-clock limits")
        return ("filtered environment", "own process group", "memory and wall-clock limits")

    def to_json(self) -> dict:
        return {"level": self.level.value, "bwrap": self.bwrap, "version": self.version, "reason": self.reason,
                "guarantees": list(self.guarantees), "unsafe_no_sandbox": unsafe_allowed()}

    def describe(self) -> str:
        if self.level is Level.BWRAP:
            return f"bwrap ({self.version or self.bwrap}): " + ", ".join(self.guarantees)
        allowed = ("untrusted candidates RUN UNSANDBOXED (--unsafe-no-sandbox / KFORGE_UNSAFE_NO_SANDBOX=1)"
                   if unsafe_allowed() else "untrusted candidates are refused (catalog seeds still run)")
        return f"process only ({self.reason}): {allowed}; to sandbox workers, {INSTALL_HINT}"


def unsafe_allowed() -> bool:
    return os.environ.get(UNSAFE_ENV, "").strip().lower() in ("1", "true", "yes")


def allow_unsafe() -> None:
    """What `--unsafe-no-sandbox` does: this process (and the workers it starts) may run untrusted
    code without bwrap."""
    os.environ[UNSAFE_ENV] = "1"


@functools.lru_cache(maxsize=None)
def probe() -> Isolation:
    """Whether bwrap runs here (a trivial sandbox running `true`), probed once per process."""
    found = shutil.which("bwrap")
    if found is None:
        return Isolation(Level.PROCESS, reason="bwrap (bubblewrap) is not installed")
    true = shutil.which("true") or "/bin/true"
    argv = [found, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            *_system_binds(), "--proc", "/proc", "--dev", "/dev", "--", true]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, env={})
        version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Isolation(Level.PROCESS, bwrap=found, reason=f"bwrap did not run: {exc}")
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return Isolation(Level.PROCESS, bwrap=found, reason=f"bwrap cannot create its namespaces here: {detail}")
    return Isolation(Level.BWRAP, bwrap=found, version=version or None)


def require(trusted: bool, what: str = "untrusted code") -> Isolation:
    """The isolation a worker for `what` gets; raises SandboxUnavailable when that would be no
    sandbox for untrusted code without the user's opt-out."""
    iso = probe()
    if iso.level is Level.PROCESS and not trusted and not unsafe_allowed():
        raise SandboxUnavailable(
            f"refusing to run {what} without a sandbox: {iso.reason}. To sandbox workers, {INSTALL_HINT}. "
            "To run it unsandboxed anyway (its code can then read and write everything you can), pass "
            f"--unsafe-no-sandbox or set {UNSAFE_ENV}=1")
    return iso


@functools.lru_cache(maxsize=1)
def _seed_digests() -> frozenset[str]:
    folder = paths.PACKAGE_DIR / "catalog"
    return frozenset(hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.py"))


def is_catalog_seed(source: str) -> bool:
    """Whether `source` is byte-identical to one of kforge's own catalog files (trusted code)."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest() in _seed_digests()


# -- scratch dirs ----------------------------------------------------------------------------------
class Scratch:
    """A worker's private scratch dir: `root/.lock` (flock'ed by this process while it lives: an
    unlocked one was left by a killed coordinator), the coordinator's own files (stdout, stderr)
    and `work/`, the only part a worker sees: its cwd, HOME, TMPDIR, /tmp, KFORGE_HOME, caches."""

    def __init__(self) -> None:
        base = scratch_base()
        clean_stale_once(base)
        self.root = tempfile.mkdtemp(prefix="w-", dir=base)
        self._lock = os.open(os.path.join(self.root, ".lock"), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.work = os.path.join(self.root, "work")
        for sub in ("home", "tmp", "kforge-home", "cache"):
            os.makedirs(os.path.join(self.work, sub))

    def path(self, *parts: str) -> str:
        return os.path.join(self.work, *parts)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        os.close(self._lock)


def scratch_base() -> str:
    base = os.path.join(tempfile.gettempdir(), f"kforge-sandbox-{os.getuid()}")
    os.makedirs(base, mode=0o700, exist_ok=True)
    return base


_cleaned: set[str] = set()
_cleaned_lock = threading.Lock()


def clean_stale_once(base: str) -> None:
    with _cleaned_lock:
        if base in _cleaned:
            return
        _cleaned.add(base)
    clean_stale(base)


def clean_stale(base: str) -> list[str]:
    """Remove the scratch dirs under `base` whose lock no process holds; returns their paths."""
    removed = []
    for entry in sorted(glob.glob(os.path.join(base, "w-*"))):
        try:
            fd = os.open(os.path.join(entry, ".lock"), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            if time.time() - os.stat(entry).st_mtime > STALE_AFTER_S:  # never got its lock
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live coordinator's
        shutil.rmtree(entry, ignore_errors=True)
        os.close(fd)
        removed.append(entry)
    return removed


# -- the bwrap command line ------------------------------------------------------------------------
def _system_binds() -> list[str]:
    out = []
    for d in SYSTEM_DIRS:
        if os.path.isdir(d):
            out += ["--ro-bind", d, d]
    for d in LINK_DIRS:
        if os.path.islink(d):
            out += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            out += ["--ro-bind", d, d]
    return out


def hidden_paths() -> list[str]:
    """What a worker must never see: the user's HOME, KFORGE_HOME, the user data dir, KFORGE_TABLE."""
    found = [os.path.expanduser("~"), str(paths.home())]
    try:
        import platformdirs

        found.append(platformdirs.user_data_dir("kforge", appauthor=False))
    except ImportError:
        pass
    table = paths.extra_table_file()
    if table is not None:
        found.append(str(table))
    return [os.path.realpath(p) for p in found if p]


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def readonly_paths(sys_path: Iterable[str], hidden: Iterable[str]) -> list[str]:
    """Python's prefixes, site-packages, the kforge source and `sys_path`, minus system dirs already
    bound and any path that is, or holds, the user's HOME; parents before children, no repeats."""
    import site

    wanted = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
              os.path.dirname(os.path.realpath(sys.executable)), SOURCE_ROOT, *site.getsitepackages(), *sys_path]
    home = os.path.realpath(os.path.expanduser("~"))
    chosen: list[str] = []
    for p in wanted:
        if not p or not os.path.isabs(p) or not os.path.exists(p):
            continue
        for q in {os.path.abspath(p), os.path.realpath(p)}:
            if _under(home, q) or any(_under(q, s) for s in (*SYSTEM_DIRS, *LINK_DIRS)):
                continue  # "/" or HOME itself would expose everything under it
            if any(_under(q, h) for h in hidden if h != home):
                continue
            chosen.append(q)
    out: list[str] = []
    for q in sorted(set(chosen), key=lambda s: (s.count("/"), s)):
        if not any(_under(q, kept) for kept in out):
            out.append(q)
    return out


def bwrap_argv(bwrap: str, command: list[str], *, work: str, env: Mapping[str, str], cuda: bool,
               sys_path: Iterable[str], ops_dir: str | None = None, info_fd: int | None = None,
               shared: Iterable[str] = ()) -> list[str]:
    """The bwrap command line running `command` in the sandbox described in the module docstring;
    `shared`: directories bound writable besides the scratch dir (trusted workers' compile caches)."""
    hidden = hidden_paths()
    # A bind that holds the scratch dir (or /tmp itself) would cover it: never bound.
    binds = [p for p in readonly_paths(sys_path, hidden) if not _under(work, p) and p != "/tmp"]
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--hostname", "kforge-sandbox", *_system_binds()]
    # /tmp and the scratch dir (usually under /tmp) before the read-only binds: a venv or checkout
    # under /tmp (a clone in /tmp/x) is bound on top of the private /tmp, not hidden by it.
    argv += ["--proc", "/proc", "--dev", "/dev", "--bind", os.path.join(work, "tmp"), "/tmp", "--bind", work, work]
    for p in binds:
        argv += ["--ro-bind", p, p]
    for h in hidden:  # visible through a bound parent (a repo that holds its KFORGE_HOME): covered over
        if os.path.exists(h) and any(_under(h, b) for b in binds):
            argv += ["--tmpfs", h] if os.path.isdir(h) else ["--ro-bind", "/dev/null", h]
    if ops_dir is not None and os.path.isdir(ops_dir):
        target = os.path.join(work, "kforge-home", "ops")
        os.makedirs(target, exist_ok=True)
        argv += ["--ro-bind", ops_dir, target]
    for p in shared:
        argv += ["--bind", p, p]
    if cuda:
        for node in sorted(glob.glob("/dev/nvidia*")):
            argv += ["--dev-bind", node, node]
        argv += ["--dev-bind-try", "/dev/dri", "/dev/dri", "--ro-bind-try", "/sys", "/sys",
                 "--ro-bind-try", "/proc/driver/nvidia", "/proc/driver/nvidia"]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    # The root itself is a tmpfs bwrap made: read-only too, so the scratch dir is the only writable place.
    argv += ["--remount-ro", "/", "--chdir", work, "--clearenv"]
    for name, value in env.items():
        argv += ["--setenv", name, value]
    return argv + ["--", *command]
