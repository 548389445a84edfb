"""kforge demo: calibrate, record, route and verify on whatever device this machine has.

For each of the nine built-in ops, dtype (bf16, fp32) and the op's demo shapes (`SHAPES`, two per
op): prove the vendor and inductor implementations correct against the fp64 reference and time them
(`kforge.evaluate.calibrate`), write the records to the user score table, then call
`kforge.ops.<op>` for real on those shapes, on one unseen shape (served by the nearest measured
shape) and on one shape with no record at all (a miss: vendor, logged). Then the offline loop on
those misses: `kforge generate --from-misses` with the catalog provider (no key, no network)
proposes a Triton kernel per op, verifies it at the missed keys in a sandboxed worker, times it
against vendor and records the fastest; the missed shapes are called again and are now served from
the table (on a CPU, where Triton runs in its interpreter, vendor honestly stays the fastest: the
new records lose the ranking, and the demo says so). Every routed result is checked with
`kforge.testing.assert_matches_reference`. About 75 s on a 2-core CPU.
Prints the routing table, the cost per call, `kforge.stats()` over the whole demo, the next steps
and where the time went (seconds per phase and per op's generate run; `--json`: "phases",
"generate_seconds"); progress goes to stderr. Exits 1 if any routed result is wrong. On a CPU the
timings are CPU timings, keyed to the CPU's fingerprint.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import os
import time
import warnings
from dataclasses import dataclass

import torch

import kforge
from kforge import paths
from kforge.backends import get_backend
from kforge.cli import _args
from kforge.cli._demo_report import short_impl, print_result
from kforge.cli._output import dtypes_text, emit_json, progress, shape_text, wrap
from kforge.device import fingerprint
from kforge.errors import KforgeError
from kforge.evaluate.calibrate import CalibrationRejected, ImplausibleTiming, calibrate, measure
from kforge.evaluate.timing import time_together
from kforge.ops import ENTRIES, get_spec
from kforge.records import CallInfo
from kforge.router import misses
from kforge.router.key import call_info
from kforge.router.policy import rank
from kforge.router.table import ScoreTable
from kforge.specs import OpSpec
from kforge.testing import assert_matches_reference

HELP = "the main job: calibrate vendor and inductor, write the table, route real calls, verify"

DTYPES = (torch.bfloat16, torch.float32)
VERIFY_SEED = 7  # routed calls use inputs that calibration never saw


@dataclass(frozen=True)
class DemoShapes:
    """An op's shapes in the demo, as its spec's `make_inputs` takes them. `measured`: calibrated
    and recorded (`--quick`: the first only). `unseen`: no record, within the nearest-shape rule of
    the first measured shape (fewer rows, the same exact dims). `no_record`: an exact dim (or, for
    an op without one, a distance) no record reaches: a miss, served by vendor and logged."""
    measured: tuple[tuple[int, ...], ...]
    unseen: tuple[int, ...]
    no_record: tuple[int, ...]


# (rows, last dim) ops: the router keys on the problem (rows, last dim), so (2, 12, 4096) is
# 24x4096. Two measured shapes per op, and small misses (generation verifies its kernels in Triton's
# interpreter on a CPU, at a cost that grows with the key: 27 s for gemv at 8x500x512, 14 s at
# 8x100x64), keep all nine within two minutes on a 2-core CPU.
ROWS = DemoShapes(measured=((32, 4096), (256, 1024)), unseen=(2, 12, 4096), no_record=(8, 200))
SHAPES = {
    "rms_norm": ROWS, "fused_add_rms_norm": ROWS, "layer_norm": ROWS, "softmax": ROWS,
    # y's (rows, d); x is (rows, 2d). No exact dim: 8x200 is a miss by distance (1024 / 200 > 4).
    "silu_and_mul": ROWS,
    "cross_entropy": ROWS,  # (rows, vocab): the loss of 24 rows over a vocabulary of 4096
    # (tokens, experts): k and renormalize follow from the expert count (64: Qwen 1.5 MoE's 60 is
    # the miss, 8: Mixtral's).
    "topk_softmax": DemoShapes(measured=((32, 64), (256, 8)), unseen=(2, 12, 64), no_record=(8, 60)),
    # (tokens, heads, kv_heads, head_size): Llama-style GQA heads of 128; 4 heads of 64 are the miss.
    "rotary_embedding": DemoShapes(measured=((32, 8, 2, 128), (1, 8, 2, 128)), unseen=(24, 8, 2, 128),
                                   no_record=(8, 4, 1, 64)),
    # (m, k, n): a 512x512 weight at 8 rows and one (decode); a 100x64 one is the miss.
    "gemv": DemoShapes(measured=((8, 512, 512), (1, 512, 512)), unseen=(2, 3, 512, 512), no_record=(8, 100, 64)),
}


def add_arguments(parser) -> None:
    parser.add_argument("--ops", default=",".join(SHAPES), help="comma-separated ops (default: all nine)")
    parser.add_argument("--quick", action="store_true", help="calibrate one shape per op and dtype instead of two")
    parser.add_argument("--backends", default="vendor,inductor",
                        help="comma-separated backends to calibrate (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    parser.add_argument("--no-generate", action="store_true", help="skip generating kernels for the misses")
    _args.add_sandbox_argument(parser)
    parser.add_argument("--variants", type=int, default=1,
                        help="catalog variants per op when generating for the misses (default: %(default)s)")


def run(args) -> int:
    with torch_notes_hidden(), contextlib.ExitStack() as closing:
        return _run(args, Phases(), closing)


def _run(args, phases: "Phases", closing: contextlib.ExitStack) -> int:
    specs = [get_spec(name.strip()) for name in args.ops.split(",") if name.strip()]
    for spec in specs:
        if spec.name not in SHAPES:
            raise KforgeError(f"--ops: the demo has shapes for {', '.join(SHAPES)}, not {spec.name!r} "
                              f"(try `kforge tune {spec.name}` or `kforge generate {spec.name}`)")
    device = torch.device(_args.device(args.device))
    if device.type == "cpu":  # Triton kernels run on CPU tensors only in its interpreter; set before triton loads
        os.environ.setdefault("TRITON_INTERPRET", "1")
    backends = [get_backend(name.strip()).name for name in args.backends.split(",") if name.strip()]
    fp = fingerprint(device)
    progress(wrap(f"kforge demo on {fp.kind}: {fp.name} (torch {fp.torch}, triton {fp.triton}); "
                   f"records go to {paths.user_table_dir()}"))
    executor = None
    if not args.no_generate:
        from kforge.evaluate.executors import LocalPoolExecutor

        # Started before calibration, after TRITON_INTERPRET is set (a worker's environment is read
        # at its start): on GPU slots a spare worker per GPU then does its Python, torch and Triton
        # imports (~5 s on the H200 host, `spares`; its first search took 18.8 s, the others 8-15 s)
        # while the GPU calibrates. CPU slots start none (`LocalPoolExecutor`'s `warm`): its
        # imports would share the cores with calibration's timings.
        executor = closing.enter_context(LocalPoolExecutor())
        executor.warm_up(trusted=True)  # the catalog's seeds are kforge's own code
    phases.end("startup")

    records, rejected = [], []
    for spec in specs:
        for dtype in DTYPES:
            for shape in measured(spec, args.quick):
                t0 = time.perf_counter()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", CalibrationRejected)
                    try:
                        found = calibrate(spec, shape, dtype, device, backends)
                    except ImplausibleTiming as exc:  # stalled twice: no record of this key
                        found = []
                        rejected.append({"key": str(exc.key), "impl": ", ".join(f.impl for f in exc.found),
                                         "reason": str(exc)})
                        progress(wrap(f"  {exc}"))
                for w in caught:
                    if isinstance(w.message, CalibrationRejected):
                        rejected.append({"key": str(w.message.key), "impl": w.message.impl, "reason": w.message.reason})
                        progress(wrap(f"  rejected {w.message.impl}: {w.message.reason}"))
                    else:
                        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                records.extend(found)
                progress(f"calibrated {spec.name} {dtypes_text(str(dtype).removeprefix('torch.'))} {shape_text(shape)}: "
                         + ", ".join(f"{r.impl} {r.p50_us:.1f} us"
                                     + ("" if r.timing == "cpu_wall" else f" (host {r.host_us:.1f})") for r in found)
                         + f"  ({time.perf_counter() - t0:.1f} s)")
    written = ScoreTable().write(records)
    kforge.reset()  # re-read the table this process just wrote
    progress(f"wrote {len(records)} records into {len(written)} shard(s)")
    phases.end("calibrate")

    table = ScoreTable()
    routes = []
    for spec in specs:
        shapes = SHAPES[spec.name]
        cases = ([(s, "measured") for s in measured(spec, args.quick)]
                 + [(shapes.unseen, "unseen"), (shapes.no_record, "no record")])
        for dtype in DTYPES:
            for shape, label in cases:
                r = route_one(spec, shape, dtype, device, table)
                routes.append({"case": label, **r})
                progress(f"routed {spec.name} {dtypes_text(r['dtypes'])} {shape_text(shape)} ({label}): "
                         f"{r['kind']} -> {short_impl(r['impl'])}, {'verified' if r['verified'] else 'WRONG'}")
    kforge.flush()
    phases.end("route")
    generated, rerouted = [], []
    calls = kforge.stats()  # kforge.reset() below forgets the counts: the demo's stats add both parts
    if not args.no_generate:
        generated = generate_for_misses(specs, device, args.variants, executor)
        closing.close()  # the executor and its idle spares
        phases.end("generate")
        kforge.reset()  # the table changed under this process
        table = ScoreTable()
        for spec in specs:
            for dtype in DTYPES:
                r = route_one(spec, SHAPES[spec.name].no_record, dtype, device, table)
                rerouted.append({"case": "after generate", **r})
                progress(f"routed {spec.name} {dtypes_text(r['dtypes'])} {shape_text(r['shape'])} (after generate): "
                         f"{r['kind']} -> {short_impl(r['impl'])}, {'verified' if r['verified'] else 'WRONG'}")
        calls = add_stats(calls, kforge.stats())
        phases.end("reroute")
    result = {"device": str(fp), "table_shards": [str(p) for p in written],
              "records": [r.to_json() for r in records], "rejected": rejected, "routes": routes + rerouted,
              "generated": generated, "stats": calls, "phases": dict(phases.seconds),
              "generate_seconds": {g["op"]: g["wall_seconds"] for g in generated},
              "process_start_seconds": phases.before, "seconds": round(phases.total(), 1)}
    ok = all(r["verified"] for r in routes + rerouted)
    if args.json:
        emit_json(result)
    else:
        print_result(result, fp)
    return 0 if ok else 1


class Phases:
    """Wall seconds of the demo's phases, each from the end of the one before (`end`), so they add
    up to at most the whole; `before`: seconds from this process's start to the demo's (Python,
    torch and kforge imports), or None where /proc cannot say."""

    def __init__(self) -> None:
        self.started = self._last = time.perf_counter()
        self.before = _process_age()
        self.seconds: dict[str, float] = {}

    def end(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 3)
        self._last = now

    def total(self) -> float:
        return time.perf_counter() - self.started


def _process_age() -> float | None:
    try:
        with open("/proc/self/stat") as f:  # field 22, starttime, in clock ticks after boot
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return round(max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK")), 2)


# torch's notes on its own choices, not on the user's program: an H200 demo printed them 8 times
# (each calibration's warning capture re-arms "once per location"). Matched by message; kforge's
# own warnings, and torch's others, pass.
TORCH_NOTES = (r"\s*Online softmax is disabled on the fly",
               r"TensorFloat32 tensor cores for float32 matrix multiplication available but not enabled")


@contextlib.contextmanager
def torch_notes_hidden():
    """Within: the UserWarnings of TORCH_NOTES are ignored; everything else as it was."""
    with warnings.catch_warnings():
        for message in TORCH_NOTES:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        yield


def measured(spec: OpSpec, quick: bool) -> tuple[tuple[int, ...], ...]:
    shapes = SHAPES[spec.name].measured
    return shapes[:1] if quick else shapes


def add_stats(a: dict, b: dict) -> dict:
    """Two `kforge.stats()` results added, op by op and implementation by implementation."""
    ops = {}
    for name in dict.fromkeys([*a["ops"], *b["ops"]]):
        x, y = a["ops"].get(name, {}), b["ops"].get(name, {})
        row = {k: x.get(k, 0) + y.get(k, 0) for k in dict.fromkeys([*x, *y]) if k != "by_impl"}
        by_impl = dict(x.get("by_impl", {}))
        for impl, n in y.get("by_impl", {}).items():
            by_impl[impl] = by_impl.get(impl, 0) + n
        ops[name] = {**row, "by_impl": by_impl}
    return {"ops": ops, "disabled": sorted({*a["disabled"], *b["disabled"]})}


def generate_for_misses(specs, device, variants: int, executor) -> list[dict]:
    """`kforge generate --from-misses` for the demo's ops: one catalog round per op over the keys
    its miss log holds, each candidate verified at those keys (and the secret shapes near them,
    the long row, every layout and seed) rather than at the op's whole shape sets, which is what
    `kforge generate` does: 2-3x less time in Triton's interpreter (cross_entropy: 4.7 s instead
    of 11 s on a 2-core CPU), and on a GPU fewer kernels to compile. The records' evidence says
    where they were verified; the router serves them no further. `executor`: the demo's
    `LocalPoolExecutor` (its caller closes it). Returns each run's JSON."""
    from kforge.gen import from_misses, run_state, search
    from kforge.gen.providers.catalog import CatalogProvider

    names = {spec.name for spec in specs}
    targets = [t for t in from_misses.targets(str(device)) if t.op in names]
    progress(wrap(f"generate --from-misses --provider catalog: {len(targets)} missed key(s), "
                   f"{variants} variant(s) per op, candidates verified at those keys in sandboxed workers"))

    def one(name: str) -> dict:
        mine = [t for t in targets if t.op == name]
        shapes = sorted({t.shape for t in mine})
        dtypes = [getattr(torch, d) for d in sorted({t.dtype for t in mine})]
        settings = run_state.Settings(rounds=1, variants=variants, top_k=1, verify_shapes=tuple(shapes))
        t0 = time.perf_counter()
        result = search.run(name, CatalogProvider(), settings, device=str(device), dtypes=dtypes, shapes=shapes,
                            executor=executor)
        seconds = time.perf_counter() - t0
        progress(wrap(f"generated {name}: {result.accepted}/{result.attempts} candidates accepted, "
                       f"{len(result.keys)} key(s) recorded ({seconds:.1f} s, run {result.run_id})"
                       + "".join(f"; not recorded: {k['dtype']} {shape_text(k['shape'])}: {k['why']}"
                                 for k in result.unrecorded_keys)))
        return {**result.to_json(), "wall_seconds": round(seconds, 2)}

    # One search per op, on GPUs as many at once as the pool has GPUs (its slots are shared: a
    # GPU still runs one task at a time). On a CPU one at a time: two searches' workers timed
    # side by side on 2 cores recorded vendor at 5-16 ms a call where it costs 4-12 us (its
    # batches lost the core mid-sample), for 43 s instead of 48 s.
    at_once = len(executor.slots) if device.type == "cuda" else 1
    with concurrent.futures.ThreadPoolExecutor(at_once, thread_name_prefix="kforge-demo") as threads:
        return list(threads.map(one, sorted({t.op for t in targets})))


NOW_REPS = 100  # timed calls per function for a routed call's "now" figures on a GPU


def route_one(spec: OpSpec, shape, dtype, device, table: ScoreTable) -> dict:
    """Call kforge.ops.<op> once for real, see from kforge.stats() what served it, check it."""
    entry = ENTRIES[spec.name]
    args = spec.make_inputs(shape, dtype, device, VERIFY_SEED)
    key = call_info(spec, args, str(fingerprint(device))).key
    before = kforge.stats()["ops"].get(spec.name, {})
    out = entry(*args)
    after = kforge.stats()["ops"][spec.name]
    kind = next(k for k in ("hit", "miss", "fallback", "pinned", "empty") if after[k] > before.get(k, 0))
    impl = next(i for i, n in after["by_impl"].items() if n > before.get("by_impl", {}).get(i, 0))
    try:
        check = assert_matches_reference(spec, args, out)
        verified, worst, error = True, check.worst_ratio, ""
    except AssertionError as exc:
        verified, worst, error = False, float("inf"), str(exc)

    # What the table said: the records of the measured shape the router used (the call's own or
    # the nearest); the router's own choice is what kforge.stats() reported above.
    ranking = rank(spec, table.records(key.device, spec.name),
                   CallInfo(key=key, contiguous=True, aligned=16, requires_grad=False))
    p50 = {r.impl: r.p50_us for r in ranking.eligible}
    score = {r.impl: r.score_us for r in ranking.eligible}  # what the router compares
    # Timed now, the routed entry point and the bare vendor call (on a CPU interleaved batch by
    # batch, so a busy machine slows both alike); the one call above is the demo's real call, the
    # timed ones never reach the miss log.
    # On a GPU 100 timed calls each (the records' timings took up to 1000, for ~0.1 s of device
    # time per function): 90 routed calls timed with 1000 took ~50 of the demo's 234 s on an H200.
    with misses.uncounted():
        fns = {"kforge": entry, "vendor": spec.vendor}
        now = time_together(fns, args, reps=NOW_REPS) if device.type == "cuda" else measure(fns, args)
    speedup = score["vendor"] / score[impl] if "vendor" in score and impl in score else None
    return {"op": spec.name, "dtypes": key.dtypes, "shape": list(shape), "problem": list(key.shape),
            "kind": kind, "from_shape": None if ranking.shape is None else list(ranking.shape),
            "from_input_shape": _input_shape(spec, ranking.shape, dtype), "impl": impl,
            "p50_us": p50, "score_us": score, "now_kforge_us": max(now["kforge"].p50_us, now["kforge"].host_us),
            "now_vendor_us": max(now["vendor"].p50_us, now["vendor"].host_us), "speedup_vs_vendor": speedup,
            "verified": verified, "max_error_ratio": worst, "error": error}


def _input_shape(spec: OpSpec, problem, dtype) -> list[int] | None:
    """The demo's measured input shape whose problem is `problem` (the router's key: topk_softmax's
    32x64 is the problem 32x64x6x0, with k and renormalize), or None."""
    if problem is None:
        return None
    for shape in SHAPES[spec.name].measured:
        if tuple(spec.problem(spec.make_inputs(shape, dtype, "meta", 0))) == tuple(problem):
            return list(shape)
    return None
