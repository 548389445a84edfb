"""kforge: PyTorch-integrated runtime dispatch for GPU kernels.

    import kforge
    y = kforge.ops.rms_norm(x, weight, 1e-6)

Every call is routed by (op, device, dtypes, shape) to the fastest verified implementation the
score table knows, and served by the vendor (PyTorch) implementation on a miss. Importing kforge
reads no table, initialises no CUDA and imports no LLM SDK.
"""
from __future__ import annotations

from kforge import ops
from kforge.errors import KforgeError, KforgeInputError, KforgePinError, UnknownNameError
from kforge.router import pins as _pins
from kforge.router.dispatch import ROUTER as _ROUTER
from kforge.userops import define as _define
from kforge.version import __version__


def define_op(name: str, schema: str, reference, make_inputs, *, shapes, **options):
    """Register an op from a PyTorch reference: routed, logged and generated for like a built-in
    one, and persisted so other processes load it by name (`kforge.userops`)."""
    return _define.define_op(name, schema, reference, make_inputs, shapes=shapes, **options)


def op(schema: str, make_inputs, *, shapes, name: str | None = None, **options):
    """Decorator form of `define_op`: the decorated function is the reference."""
    return _define.op(schema, make_inputs, shapes=shapes, name=name, **options)


def use(op: str, impl: str):
    """Context manager: calls of `op` inside the block go to `impl` ("vendor", "inductor",
    "triton:<id>") or raise `KforgePinError`; never a silent fallback. `op` may be a user op
    persisted under KFORGE_HOME (loaded now); an unknown name raises, listing the known ones."""
    ops.get_spec(op)
    return _pins.use(op, impl)


def stats() -> dict:
    """Calls in this process per op: hits, misses, fallbacks, pinned and empty, by implementation."""
    return _ROUTER.stats()


def flush() -> list:
    """Write the miss counts gathered so far to the miss log now (also done at exit)."""
    return _ROUTER.flush()


def graphed(fn, *example_inputs, warmup: int = 3, check: bool = True):
    """`fn(*example_inputs)` (a decode step built from kforge ops) captured into one CUDA graph:
    returns a callable that checks its arguments against the captured ones, copies them in and
    replays (`kforge.router.graphs`)."""
    from kforge.router.graphs import graphed as _graphed

    return _graphed(fn, *example_inputs, warmup=warmup, check=check)


def patch(model, **options):
    """Serve an eager Hugging Face model's norms, SiLU gates, rotary embedding, MoE routers and loss
    through kforge's ops, each replacement checked against the model's own code first; returns a
    `PatchReport` of what was patched and what was left, and why (`kforge.patching`)."""
    from kforge.patching import patch as _patch

    return _patch(model, **options)


def unpatch(model):
    """Undo `kforge.patch(model)`; returns the report of the patch undone, or None."""
    from kforge.patching import unpatch as _unpatch

    return _unpatch(model)


def explain(model, *example_inputs, **kwargs):
    """What `torch.compile(model, backend="kforge")` rewrites in `model` for these inputs, where,
    and why other candidate patterns were left alone (`kforge.compile.explain`)."""
    from kforge.compile.explain import explain as _explain

    return _explain(model, *example_inputs, **kwargs)


def warmup(*calls, device=None, model=None, inputs=()) -> list[dict]:
    """Build now what the first routed calls would build (an Inductor compile of a reference, a
    Triton kernel's load and first launch), so that no call in serving waits for it.

    calls: `(op, shape, dtype)` triples: each op is called once at `shape` (its problem shape, as
    `kforge table` shows it) and dtype on `device` (default cuda when there is one), on inputs its
    spec makes. model, inputs: `model(*inputs)` runs once under `torch.no_grad()`, which warms every
    kforge op the model calls at these shapes. Returns what ran, with the seconds each took."""
    import time

    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    done = []
    with torch.no_grad():
        for call in calls:
            try:
                name, shape, dtype = call
            except (TypeError, ValueError):
                raise KforgeInputError("warmup", "calls", f"must be (op, shape, dtype) triples, got {call!r}") from None
            spec = ops.get_spec(name)
            args = spec.make_inputs(tuple(shape), dtype, device, 0)
            start = time.perf_counter()
            ops.ENTRIES[name](*args)
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize(device)
            done.append({"op": name, "shape": list(shape), "dtype": str(dtype).removeprefix("torch."),
                         "device": str(device), "seconds": time.perf_counter() - start})
        if model is not None:
            start = time.perf_counter()
            model(*inputs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            done.append({"model": type(model).__name__, "seconds": time.perf_counter() - start})
    return done


def tune(*calls, model: str | None = None, tokens=None, device=None, max_seconds: float | None = None,
         background: bool = False, inductor: bool = True, candidates: bool = True):
    """Verify and time the implementations kforge knows at new keys, in a child process
    (`kforge tune`: vendor, Inductor, the catalog's seeds and stored kernels; candidates in its
    sandboxed workers), and record them; the router serves them from its next table check on.

    calls: `(op, shape, dtype)` triples, shape as the op's inputs are made (`kforge tune --key`);
    model, tokens: every op's keys in that model's forward (`kforge.shapes`). Returns the run's
    report (`kforge tune --json`) and raises KforgeError when the child failed. background=True:
    returns the running `subprocess.Popen` at once. With no calls and no model, background=True
    turns background tuning on for this process (as KFORGE_TUNE=background does) and returns the
    router's `Tuner`."""
    import json
    import subprocess

    import torch

    from kforge.router import background as _background

    if not calls and model is None:
        if not background:
            raise KforgeInputError("tune", "calls", "name (op, shape, dtype) calls or a model, or pass background=True")
        if _ROUTER.tuner is None:
            _ROUTER.tuner = _background.Tuner()
        return _ROUTER.tuner
    keys = []
    for call in calls:
        try:
            name, shape, dtype = call
        except (TypeError, ValueError):
            raise KforgeInputError("tune", "calls", f"must be (op, shape, dtype) triples, got {call!r}") from None
        spec = ops.get_spec(name)
        if not isinstance(dtype, torch.dtype) or dtype not in spec.dtypes:
            raise KforgeInputError("tune", "calls", f"{name}: dtype must be one of {spec.dtypes}, got {dtype!r}")
        keys.append(_background.key_text(spec.name, str(dtype).removeprefix("torch."), tuple(int(d) for d in shape)))
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    argv = _background.command(keys, device, max_seconds=max_seconds, json_out=True)
    if model is not None:
        argv += ["--model", model] + (["--tokens", ",".join(str(int(t)) for t in tokens)] if tokens else [])
    argv += (["--no-inductor"] if not inductor else []) + (["--no-candidates"] if not candidates else [])
    if background:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise KforgeError(f"kforge tune failed (exit code {done.returncode}): {last}") from None
    _ROUTER.next_check = 0.0  # the next call re-reads the table
    return report


def reset() -> None:
    """Forget routing decisions and cached table reads; re-read KFORGE_HOME/KFORGE_TABLE/KFORGE_PIN."""
    from kforge.router.dispatch import reset as _reset

    _reset()


__all__ = ["ops", "define_op", "op", "use", "stats", "flush", "explain", "warmup", "tune", "reset", "KforgeError",
           "KforgeInputError", "KforgePinError", "UnknownNameError", "__version__"]
