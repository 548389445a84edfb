"""The static check (`kforge.evaluate.static.check_source`): what host code and kernels may do.

Adversarial candidate files are in tests/adversarial (test_adversarial.py); here, small sources
that each show one allowed pattern or one forbidden one, so a rule's edge is visible."""
from __future__ import annotations

import json
import textwrap
import types
from pathlib import Path

import pytest

from kforge.checks.names import triton_language_modules, triton_language_names
from kforge.evaluate.static import Rule, check_source
from kforge.ops import SPECS, get_spec

ROOT = Path(__file__).resolve().parents[1]
HEADER = "import torch\nimport triton\nimport triton.language as tl\n\n"
KERNEL = """
@triton.jit
def _kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)
"""


def source(body: str, header: str = HEADER) -> str:
    return header + KERNEL + "\n" + textwrap.dedent(body)


def rules(src: str, op: str = "softmax") -> set[str]:
    return {f.rule for f in check_source(src, get_spec(op))}


def honest_files():
    catalog = sorted((ROOT / "src/kforge/catalog").glob("*.py"))
    return [p for p in catalog if p.name != "__init__.py"] + sorted((ROOT / "tests/candidates").glob("*.py")) \
        + sorted((ROOT / "src/kforge/tables/kernels").glob("*/*.py"))


def op_of(path: Path) -> str | None:
    meta = path.with_suffix(".json")
    if meta.exists():  # a stored kernel: its metadata names its op
        return json.loads(meta.read_text())["op"]
    if path.parent.name == "catalog":
        return next(op for op, spec in SPECS.items() if path.name in spec.seed_kernels)
    text = path.read_text()
    if "scaled_relu" in path.name:
        return None  # a user op's candidate (tests/user_op_defs.py)
    return "fused_add_rms_norm" if "residual" in text else "rms_norm" if "weight" in text else "softmax"


@pytest.mark.parametrize("path", honest_files(), ids=lambda p: p.name)
def test_honest_kernel_files_pass(path):
    op = op_of(path)
    assert check_source(path.read_text(), get_spec(op) if op else None) == []


def test_the_triton_language_names_are_the_installed_public_api():
    import triton.language as tl

    names, modules = triton_language_names(), triton_language_modules()
    public = {f"triton.language.{n}" for n in tl.__all__ if not isinstance(getattr(tl, n), types.ModuleType)}
    assert public <= names and "triton.language.load" in names
    assert "triton.language.math.exp" in names and "triton.language.math" in modules
    # module re-exports are never followed: core (builtins, inspect), math.core, functools.wraps
    assert not {n for n in names if ".core" in n or n.endswith((".builtins", ".inspect", ".wraps", ".os"))}


ALLOWED = {
    "launch with grid lambda and helpers": """
        def _grid(n, block):
            return (triton.cdiv(n, block),)

        def forward(x):
            y = torch.empty_like(x)
            n = x.numel()
            block = max(triton.next_power_of_2(x.shape[-1]), 16)
            grid = lambda meta: ((n + meta["BLOCK"] - 1) // meta["BLOCK"],)
            _kernel[grid](x, y, n, BLOCK=block)
            _kernel[_grid(n, block)](x, y, n, BLOCK=block)
            return y
    """,
    "metadata and views": """
        def forward(x):
            rows = x.reshape(-1, x.shape[-1])
            y = torch.empty_strided(rows.shape, (rows.stride(0), 1), dtype=torch.float32, device=x.device)
            assert x.is_contiguous() and x.dim() >= 1 and x.element_size() in (2, 4, 8)
            if x.dtype == torch.bfloat16 or x.data_ptr() % 16:
                pass
            out = rows.new_empty(rows.shape).view(x.shape)
            with torch.cuda.device(x.device):
                _kernel[(1,)](rows, out, rows.numel(), BLOCK=16)
            return out
    """,
    "autotune, heuristics and libdevice": """
        import math
        from typing import Any
        from triton.language.extra import libdevice

        @triton.autotune(configs=[triton.Config({"BLOCK": 64}, num_warps=4)], key=["n"])
        @triton.heuristics({"EVEN": lambda args: args["n"] % 64 == 0})
        @triton.jit
        def _tuned(x_ptr, n, BLOCK: tl.constexpr, EVEN: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            tl.store(x_ptr + offs, libdevice.tanh(tl.load(x_ptr + offs)))

        def forward(x: Any):
            y = torch.empty_like(x)
            _tuned[(math.prod(x.shape[:-1]),)](y, x.shape[-1])
            return y
    """,
    "properties and the device's type": """
        def forward(x):
            y = torch.empty_like(x.T, memory_format=torch.contiguous_format).T
            if x.device.type == "cuda" and x.is_cuda and x.ndim == 2:
                pass
            _kernel[(1,)](x, y, x.numel(), BLOCK=16)
            return y
    """,
    "math libraries, constexpr constants and a combine function": """
        from triton.language.extra.cuda import libdevice as cuda_libdevice
        from triton.language.math import exp

        SCALE = tl.constexpr(2)
        WIDTHS = tuple(2 ** i for i in range(4))
        NAME = f"block{SCALE}"

        @triton.jit
        def _add(a, b):
            return a + b

        @triton.jit
        def _reduce(x_ptr, BLOCK: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            v = tl.load(x_ptr + offs).to(x_ptr.dtype.element_ty)
            v = tl.maximum(exp(v), cuda_libdevice.tanh(v), propagate_nan=tl.PropagateNan.ALL)
            tl.store(x_ptr + offs, tl.reduce(v, 0, _add) * SCALE + tl.math.exp2(v))

        def forward(x):
            y = torch.empty_like(x)
            _reduce[(1,)](y, BLOCK=WIDTHS[-1])
            return y
    """,
    "a parameter that shadows a builtin": """
        def forward(input):
            y = torch.empty_like(input)
            _kernel[(1,)](input, y, input.numel(), BLOCK=16)
            return y
    """,
}


@pytest.mark.parametrize("name", ALLOWED)
def test_allowed_patterns_pass(name):
    assert check_source(source(ALLOWED[name]), get_spec("softmax")) == []


FORBIDDEN = {
    # torch compute on the host, however it is reached
    "torch function": ("def forward(x):\n    return torch.softmax(x, -1)", Rule.TORCH),
    "functional alias": ("F = torch.nn.functional\ndef forward(x):\n    return F.softmax(x, -1)", Rule.TORCH),
    "from torch import": ("from torch import softmax\ndef forward(x):\n    return softmax(x, -1)", Rule.TORCH),
    "unbound method": ("def forward(x):\n    return torch.Tensor.softmax(x, -1)", Rule.TORCH),
    "aten op": ("def forward(x):\n    return torch.ops.aten._softmax(x, -1, False)", Rule.TORCH),
    "tensor method": ("def forward(x):\n    return x.float().exp()", Rule.TORCH),
    "method on a container element": ("def forward(x):\n    return [x][0].sum()", Rule.TORCH),
    "bound method called later": ("def forward(x):\n    f = x.softmax\n    return f(-1)", Rule.TORCH),
    "colliding name on a tensor": ("def forward(x):\n    return x.add(1)", Rule.TORCH),
    "method on an allocation": ("def forward(x):\n    return torch.empty_like(x).fill_(0)", Rule.TORCH),
    "arithmetic": ("def forward(x):\n    y = torch.empty_like(x)\n    return y * 0 + x", Rule.TORCH),
    "arithmetic via a container": ("def forward(x):\n    return [x][0] * 2", Rule.TORCH),
    "arithmetic in a helper": ("def _h(a):\n    return a - 1\ndef forward(x):\n    return _h(x)", Rule.TORCH),
    "in-place arithmetic": ("def forward(x):\n    y = torch.empty_like(x)\n    y += x\n    return y", Rule.TORCH),
    "comparison": ("def forward(x):\n    return x == x", Rule.TORCH),
    "truth value (host sync)": ("def forward(x):\n    if x.view(-1):\n        pass\n    return x", Rule.TORCH),
    "indexing": ("def forward(x):\n    return x[0]", Rule.TORCH),
    "writing a slice": ("def forward(x):\n    y = torch.empty_like(x)\n    y[:] = 1\n    return y", Rule.TORCH),
    "iteration": ("def forward(x):\n    for row in x:\n        pass\n    return x", Rule.TORCH),
    "host read": ("def forward(x):\n    return float(x.view(-1))", Rule.TORCH),
    "sum builtin": ("def forward(x):\n    return sum(x)", Rule.TORCH),
    "torch inside a kernel": ("@triton.jit\ndef _k(p):\n    torch.exp(p)\ndef forward(x):\n    return x", Rule.TORCH),
    # the reference and kforge
    "import kforge": ("import kforge\ndef forward(x):\n    return kforge.ops.softmax(x)", Rule.KFORGE),
    "torch.ops.kforge": ("def forward(x):\n    return torch.ops.kforge.softmax(x)", Rule.KFORGE),
    # fallbacks, streams, processes, files, network, environment
    "try/except": ("def forward(x):\n    try:\n        pass\n    except Exception:\n        pass\n    return x", Rule.FALLBACK),
    "try/finally": ("def forward(x):\n    try:\n        pass\n    finally:\n        pass\n    return x", Rule.FALLBACK),
    "stream": ("def forward(x):\n    s = torch.cuda.current_stream()\n    return x", Rule.STREAM),
    "event": ("def forward(x):\n    e = torch.cuda.Event()\n    return x", Rule.STREAM),
    "synchronize": ("def forward(x):\n    torch.cuda.synchronize()\n    return x", Rule.STREAM),
    "record_stream": ("def forward(x, s=None):\n    x.record_stream(s)\n    return x", Rule.STREAM),
    "subprocess": ("import subprocess\ndef forward(x):\n    subprocess.run(['ls'])\n    return x", Rule.PROCESS),
    "threading": ("import threading\ndef forward(x):\n    return x", Rule.PROCESS),
    "sys.exit": ("import sys\ndef forward(x):\n    sys.exit(0)", Rule.PROCESS),
    "exit builtin": ("def forward(x):\n    exit()", Rule.PROCESS),
    "socket": ("import socket\ndef forward(x):\n    return x", Rule.NETWORK),
    "urllib": ("from urllib.request import urlopen\ndef forward(x):\n    return x", Rule.NETWORK),
    "pathlib": ("from pathlib import Path\ndef forward(x):\n    Path('/tmp/a').write_text('')\n    return x", Rule.FILESYSTEM),
    "os.path": ("import os\ndef forward(x):\n    os.path.exists('/tmp')\n    return x", Rule.FILESYSTEM),
    "open shadowed elsewhere": ("def _f(open):\n    return open\nopen('/tmp/a')\ndef forward(x):\n    return x", Rule.FILESYSTEM),
    "getenv": ("from os import getenv\ndef forward(x):\n    getenv('A')\n    return x", Rule.ENVIRONMENT),
    # dynamic code and introspection
    "eval": ("def forward(x):\n    return eval('x')", Rule.DYNAMIC),
    "__import__": ("def forward(x):\n    __import__('os')\n    return x", Rule.DYNAMIC),
    "importlib": ("import importlib\ndef forward(x):\n    return x", Rule.DYNAMIC),
    "ctypes": ("import ctypes\ndef forward(x):\n    return x", Rule.DYNAMIC),
    "dunder attribute": ("def forward(x):\n    return x.__class__", Rule.DYNAMIC),
    "setattr": ("def forward(x):\n    setattr(x, 'a', 1)\n    return x", Rule.DYNAMIC),
    "operator.attrgetter": ("import operator\ndef forward(x):\n    return x", Rule.DYNAMIC),
    # patches and state
    "patch torch": ("torch.testing.assert_close = None\ndef forward(x):\n    return x", Rule.PATCH),
    "patch triton": ("triton.cdiv = lambda a, b: 1\ndef forward(x):\n    return x", Rule.PATCH),
    "patch own kernel": ("def forward(x):\n    return x\n_kernel.run = None", Rule.PATCH),
    "delete a module attribute": ("del torch.allclose\ndef forward(x):\n    return x", Rule.PATCH),
    "global": ("N = 0\ndef forward(x):\n    global N\n    return x", Rule.GLOBAL_STATE),
    "while 1": ("def forward(x):\n    while 1:\n        pass", Rule.HANG),
    # imports and APIs outside the allow-lists
    "functools": ("import functools\n@functools.lru_cache\ndef forward(x):\n    return x", Rule.IMPORT),
    "relative import": ("from . import other\ndef forward(x):\n    return x", Rule.IMPORT),
    "triton.testing": ("def forward(x):\n    triton.testing.do_bench(lambda: 0)\n    return x", Rule.API),
    # the contract
    "no forward": ("def fwd(x):\n    return x", Rule.CONTRACT),
    # triton.language: its public names only
    "triton.language.core": ("def forward(x):\n    tl.core.builtins.print(1)\n    return x", Rule.API),
    "a library's re-export": ("def forward(x):\n    return tl.math.core", Rule.API),
    "import from core": ("from triton.language.core import inspect\ndef forward(x):\n    return x", Rule.API),
    "an unlisted submodule": ("def forward(x):\n    return tl.target_info", Rule.API),
    "a module as a value": ("def forward(x):\n    m = tl\n    return x", Rule.DYNAMIC),
    "a value's attribute in a kernel": ("@triton.jit\ndef _k2(p):\n    p.handle\ndef forward(x):\n"
                                        "    _k2[(1,)](x)\n    return x", Rule.ATTRIBUTE),
    "a value's attribute on the host": ("def forward(x):\n    x.grad_fn\n    return x", Rule.ATTRIBUTE),
    # private names
    "private attribute": ("def forward(x):\n    return x._version", Rule.PRIVATE),
    "private name not defined": ("def forward(x):\n    return _undefined", Rule.PRIVATE),
    "private import": ("from torch import _C\ndef forward(x):\n    return x", Rule.PRIVATE),
    "module dunder": ("def forward(x):\n    return __loader__", Rule.DYNAMIC),
    # builtins outside the list
    **{f"builtin {b}": (f"def forward(x):\n    {b}(x)\n    return x", Rule.DYNAMIC)
       for b in ("type", "object", "super", "vars", "id", "callable", "hasattr", "dir")},
    "print": ("def forward(x):\n    print(1)\n    return x", Rule.BUILTIN),
    "iter": ("def forward(x):\n    iter(())\n    return x", Rule.BUILTIN),
    ".format": ("def forward(x):\n    '{0}'.format(1)\n    return x", Rule.DYNAMIC),
    "string annotation": ("def forward(x: 'tl'):\n    return x", Rule.DYNAMIC),
    "generator": ("def forward(x):\n    yield x", Rule.DYNAMIC),
    # the module's shape and its state
    "class": ("class A:\n    pass\ndef forward(x):\n    return x", Rule.CLASS),
    "class in a function": ("def forward(x):\n    class A:\n        pass\n    return x", Rule.CLASS),
    "top-level call": ("torch.empty(1)\ndef forward(x):\n    return x", Rule.TOPLEVEL),
    "top-level loop": ("for i in range(2):\n    pass\ndef forward(x):\n    return x", Rule.TOPLEVEL),
    "module-level list": ("CACHE = []\ndef forward(x):\n    return x", Rule.GLOBAL_STATE),
    "module-level generator": ("G = (i for i in range(2))\ndef forward(x):\n    return x", Rule.GLOBAL_STATE),
    "module-level call result": ("F = torch.empty(1)\ndef forward(x):\n    return x", Rule.GLOBAL_STATE),
    "writes a module constant's item": ("T = (1,)\ndef forward(x):\n    T[0] = 2\n    return x", Rule.GLOBAL_STATE),
    "reads SEARCH_SPACE": ("SEARCH_SPACE = {'A': [1]}\ndef forward(x):\n    SEARCH_SPACE['A']\n    return x",
                           Rule.GLOBAL_STATE),
    "mutable default": ("def forward(x, cache={}):\n    return x", Rule.GLOBAL_STATE),
    "mutable lambda default": ("def forward(x):\n    f = lambda c=[]: c\n    return x", Rule.GLOBAL_STATE),
    "attribute assignment": ("def forward(x):\n    y = torch.empty_like(x)\n    y.tag = 1\n    return y", Rule.PATCH),
    "other decorator": ("def d(f):\n    return f\n@d\ndef forward(x):\n    return x", Rule.API),
    "triton.jit as a call": ("def forward(x):\n    triton.jit(forward)\n    return x", Rule.API),
    "autotune do_bench": ("@triton.autotune(configs=[], key=[], do_bench=None)\n@triton.jit\ndef _k3(p):\n    pass\n"
                          "def forward(x):\n    _k3[(1,)](x)\n    return x", Rule.API),
    # kernels are launched, never called
    "kernel called": ("def forward(x):\n    _kernel(x, x, 1, 4)\n    return x", Rule.KERNEL_CALL),
    "kernel as a value": ("def forward(x):\n    k = _kernel\n    return x", Rule.KERNEL_CALL),
    "kernel attribute": ("def forward(x):\n    _kernel.fn\n    return x", Rule.KERNEL_CALL),
    "kernel uses a host function": ("def _h():\n    return 1\n@triton.jit\ndef _k4(p):\n    _h()\n"
                                    "def forward(x):\n    _k4[(1,)](x)\n    return x", Rule.KERNEL_CALL),
    "grid reads a tensor": ("def forward(x):\n    y = torch.empty_like(x)\n"
                            "    _kernel[lambda meta: (meta['x_ptr'].numel(),)](x, y, 4, BLOCK=4)\n    return y", Rule.TORCH),
    "grid passes its metadata on": ("def _g(meta):\n    return _h(meta)\ndef _h(m):\n    return (1,)\n"
                                    "def forward(x):\n    _kernel[_g](x, x, 4, BLOCK=4)\n    return x", Rule.TORCH),
    "heuristic reads a tensor": ("@triton.heuristics({'B': lambda args: args['p'] * 2})\n@triton.jit\n"
                                 "def _k6(p, B: tl.constexpr):\n"
                                 "    pass\ndef forward(x):\n    _k6[(1,)](x)\n    return x", Rule.TORCH),
    "autotune prune hook": ("@triton.autotune(configs=[], key=[], prune_configs_by={})\n@triton.jit\ndef _k7(p):\n"
                            "    pass\ndef forward(x):\n    _k7[(1,)](x)\n    return x", Rule.API),
    "rebinding an imported name": ("import math\ndef forward(x):\n    math = torch.Tensor\n    return math.softmax(x, -1)",
                                   Rule.PATCH),
    "a parameter named like an import": ("import math\ndef forward(x, math=1):\n    return x", Rule.PATCH),
    "one name imported twice": ("import math\nfrom torch import Tensor as math\ndef forward(x):\n    return x",
                                Rule.PATCH),
    "import in a function": ("def forward(x):\n    import math\n    return x", Rule.IMPORT),
    "string return annotation": ("def forward(x) -> 'tl':\n    return x", Rule.DYNAMIC),
    "kernel calls its argument": ("@triton.jit\ndef _k5(f):\n    f()\ndef forward(x):\n    _k5[(1,)](x)\n"
                                  "    return x", Rule.KERNEL_CALL),
}


@pytest.mark.parametrize("name", FORBIDDEN)
def test_forbidden_patterns_are_flagged(name):
    body, rule = FORBIDDEN[name]
    found = check_source(source(body), get_spec("softmax"))
    assert rule in {f.rule for f in found}, found


def test_findings_give_the_line():
    src = source("def forward(x):\n    y = torch.empty_like(x)\n    return torch.exp(x)\n")
    (finding,) = check_source(src, get_spec("softmax"))
    assert finding.rule == Rule.TORCH and "torch.exp" in finding.message
    assert src.splitlines()[finding.line - 1].strip() == "return torch.exp(x)"


def test_unparseable_source_is_one_finding():
    (finding,) = check_source("def forward(x:\n    return x\n", get_spec("softmax"))
    assert finding.rule == Rule.SYNTAX and finding.line == 1


def test_only_the_ops_tensor_arguments_are_tensors():
    # eps is a float: arithmetic on it is Python's; on weight it would be torch's.
    ok = source("def forward(x, weight, eps=1e-6):\n    e = eps * 2\n    return torch.empty_like(x)")
    bad = source("def forward(x, weight, eps=1e-6):\n    w = weight * 2\n    return torch.empty_like(x)")
    assert rules(ok, "rms_norm") == set()
    assert rules(bad, "rms_norm") == {Rule.TORCH}


def test_without_a_spec_parameters_without_defaults_are_tensors():
    src = source("def forward(x, scale=2.0):\n    s = scale * 2\n    return x * s")
    assert {f.rule for f in check_source(src)} == {Rule.TORCH}
