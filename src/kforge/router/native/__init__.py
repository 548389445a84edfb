"""kforge's native call key (`fastkey.cpp`): built once per Python, torch and source version by
`python -m kforge.router.native build` (scripts/setup.sh runs it), loaded by the router when built.

Why a C++ key: on a slow host the Python key of a call (six attribute reads per tensor, a tuple)
costs 0.6-1.1 us for one to three tensors, more than the whole budget of a routed call over calling
its implementation directly (issue 18: 1.0 us, of it 0.3 us for the lookup). The native key reads the
same facts from the tensors' metadata in one C call (~0.1 us). Torch's own guard machinery was
weighed first: `torch._C._dynamo.guards.TensorGuards` is unused by Dynamo since torch 2.13, has no
documented signature, ignored sizes in our probes and crashed the process when built without its
keyword arguments; Dynamo's guard managers are internal to its frame evaluation.

What it reads is the tensors' C++ metadata: a `torch.Tensor` subclass that overrides `shape` or
`is_contiguous` in Python (without Python dispatch) is keyed by what its storage really is, where
the Python key would read the override (the same kernels serve the same memory either way).
Tensors it cannot describe (Python dispatch, sparse, nested, symbolic sizes) and scalars other
than None, bool, float and 64-bit int go to the Python key.

Nothing here compiles at import: a missing or stale build means the Python key (same decisions,
slower), and `kforge doctor` says so. The build is one g++ command against the running torch's
headers and libraries (no ninja), into `KFORGE_NATIVE_DIR` or the user cache dir, under a tag of the
Python, torch and source versions, so a torch upgrade never loads a stale binary.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

SOURCE = Path(__file__).with_name("fastkey.cpp")
MODULE = "kforge_fastkey"
DISABLE_ENV = "KFORGE_NATIVE"  # "0": never load the native key (tests of the Python path)

_loaded: ModuleType | None = None
_why_not: str | None = None


def tag() -> str:
    import torch

    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    return f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}-{digest}".replace("+", "_")


def build_dir() -> Path:
    env = os.environ.get("KFORGE_NATIVE_DIR")
    if env:
        return Path(env) / tag()
    import platformdirs

    return Path(platformdirs.user_cache_dir("kforge", appauthor=False)) / "native" / tag()


def library_path() -> Path:
    return build_dir() / (MODULE + importlib.machinery.EXTENSION_SUFFIXES[0])


def build(verbose: bool = False) -> Path:
    """Compile `fastkey.cpp` for the running Python and torch; returns the library's path. Raises
    RuntimeError with the compiler's message when it cannot."""
    import torch
    from torch.utils import cpp_extension

    wanted = os.environ.get("CXX")
    compiler = shutil.which(wanted) if wanted else shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError(f"no C++ compiler: {f'CXX={wanted} is not an executable' if wanted else 'no g++ or c++ on PATH'}"
                           " (apt-get install g++)")
    out = library_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden",
               f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-I{sysconfig.get_paths()['include']}",
               *(f"-I{p}" for p in cpp_extension.include_paths()), str(SOURCE), "-o", str(tmp),
               f"-L{lib}", f"-Wl,-rpath,{lib}", "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python"]
    if verbose:
        print(" ".join(command), file=sys.stderr)
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except OSError as exc:
        raise RuntimeError(f"{compiler} could not run: {exc}") from None
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{compiler} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    os.replace(tmp, out)  # atomic: a process loading it meanwhile sees the old file or the new one
    return out


def load() -> ModuleType | None:
    """The built native module, or None (then `why_not()` says why). Loads once per process."""
    global _loaded, _why_not
    if _loaded is not None or _why_not is not None:
        return _loaded
    if os.environ.get(DISABLE_ENV) == "0":
        _why_not = f"switched off ({DISABLE_ENV}=0)"
        return None
    try:
        path = library_path()
        if not path.is_file():
            _why_not = f"not built for this Python and torch ({path} missing)"
            return None
        spec = importlib.util.spec_from_file_location(MODULE, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded = module
    except Exception as exc:  # a broken build must cost speed, never the user's program
        _why_not = f"could not load {MODULE}: {type(exc).__name__}: {exc}"
    return _loaded


def why_not() -> str | None:
    load()
    return _why_not


def _forget() -> None:
    """Tests: load again on the next `load()` (after changing KFORGE_NATIVE or the build dir)."""
    global _loaded, _why_not
    _loaded = _why_not = None
