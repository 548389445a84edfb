"""kforge demo: calibrate, record, route and verify on whatever device this machine has.

For each op, dtype (bf16, fp32) and a few shapes: prove the vendor and inductor implementations
correct against the fp64 reference and time them (`kforge.evaluate.calibrate`), write the records
to the user score table, then call `kforge.ops.<op>` for real on those shapes, on one unseen shape
(served by the nearest measured shape) and on one shape with no record at all (a miss: vendor,
logged). Then the offline loop on those misses: `kforge generate --from-misses` with the catalog
provider (no key, no network) proposes Triton kernels, verifies them in sandboxed workers, times
them against vendor and records the fastest; the missed shapes are called again and are now
served from the table (on a CPU, where Triton runs in its interpreter, vendor honestly stays the
fastest: the new records lose the ranking, and the demo says so). Every routed result is checked
with `kforge.testing.assert_matches_reference`.
Prints the routing table and `kforge.stats()`; progress goes to stderr. Exits 1 if any routed
result is wrong. On a CPU the timings are CPU timings, keyed to the CPU's fingerprint.
"""
from __future__ import annotations

import os
import textwrap
import time
import warnings

import torch

from kforge.specs import OpSpec
import kforge
from kforge import paths
from kforge.backends import get_backend
from kforge.cli import _args
from kforge.cli._output import WIDTH, device_text, dtypes_text, emit_json, number, progress, render, shape_text
from kforge.device import fingerprint
from kforge.evaluate.calibrate import CalibrationRejected, ImplausibleTiming, calibrate, measure
from kforge.ops import ENTRIES, get_spec
from kforge.records import CallInfo
from kforge.router import misses
from kforge.router.key import call_info
from kforge.router.policy import rank
from kforge.router.table import ScoreTable
from kforge.testing import assert_matches_reference

HELP = "the main job: calibrate vendor and inductor, write the table, route real calls, verify"

DTYPES = (torch.bfloat16, torch.float32)
# Input shapes; the router keys on the problem (rows, last dim), so (2, 12, 4096) is 24x4096.
MEASURED = ((32, 4096), (1, 4096), (256, 1024))
QUICK = MEASURED[:1]
UNSEEN = (2, 12, 4096)  # problem 24x4096: no record, served by the nearest measured 32x4096 (fewer rows than verified)
NO_RECORD = (8, 1000)  # no record with a last dim of 1000: a miss, served by vendor and logged
VERIFY_SEED = 7  # routed calls use inputs that calibration never saw


def add_arguments(parser) -> None:
    parser.add_argument("--ops", default=",".join(("rms_norm", "fused_add_rms_norm", "softmax")),
                        help="comma-separated ops (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help=f"calibrate one shape per op and dtype instead of {len(MEASURED)}")
    parser.add_argument("--backends", default="vendor,inductor",
                        help="comma-separated backends to calibrate (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    parser.add_argument("--no-generate", action="store_true", help="skip generating kernels for the misses")
    _args.add_sandbox_argument(parser)
    parser.add_argument("--variants", type=int, default=2,
                        help="catalog variants per op when generating for the misses (default: %(default)s)")


def run(args) -> int:
    started = time.perf_counter()
    specs = [get_spec(name.strip()) for name in args.ops.split(",") if name.strip()]
    device = torch.device(_args.device(args.device))
    if device.type == "cpu":  # Triton kernels run on CPU tensors only in its interpreter; set before triton loads
        os.environ.setdefault("TRITON_INTERPRET", "1")
    backends = [get_backend(name.strip()).name for name in args.backends.split(",") if name.strip()]
    shapes = QUICK if args.quick else MEASURED
    fp = fingerprint(device)
    progress(f"kforge demo on {fp.kind}: {fp.name} (torch {fp.torch}, triton {fp.triton}); "
             f"records go to {paths.user_table_dir()}")

    records, rejected = [], []
    for spec in specs:
        for dtype in DTYPES:
            for shape in shapes:
                t0 = time.perf_counter()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", CalibrationRejected)
                    try:
                        found = calibrate(spec, shape, dtype, device, backends)
                    except ImplausibleTiming as exc:  # stalled twice: no record of this key
                        found = []
                        rejected.append({"key": str(exc.key), "impl": ", ".join(f.impl for f in exc.found),
                                         "reason": str(exc)})
                        progress(f"  {exc}")
                for w in caught:
                    if isinstance(w.message, CalibrationRejected):
                        rejected.append({"key": str(w.message.key), "impl": w.message.impl, "reason": w.message.reason})
                        progress(f"  rejected {w.message.impl}: {w.message.reason}")
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

    table = ScoreTable()
    routes = []
    for spec in specs:
        for dtype in DTYPES:
            for shape, label in [(s, "measured") for s in shapes] + [(UNSEEN, "unseen"), (NO_RECORD, "no record")]:
                r = route_one(spec, shape, dtype, device, table)
                routes.append({"case": label, **r})
                progress(f"routed {spec.name} {dtypes_text(r['dtypes'])} {shape_text(shape)} ({label}): "
                         f"{r['kind']} -> {r['impl']}, {'verified' if r['verified'] else 'WRONG: ' + r['error']}")
    kforge.flush()
    generated, rerouted = [], []
    if not args.no_generate:
        generated = generate_for_misses(specs, device, args.variants)
        kforge.reset()  # the table changed under this process
        table = ScoreTable()
        for spec in specs:
            for dtype in DTYPES:
                r = route_one(spec, NO_RECORD, dtype, device, table)
                rerouted.append({"case": "after generate", **r})
                progress(f"routed {spec.name} {dtypes_text(r['dtypes'])} {shape_text(NO_RECORD)} (after generate): "
                         f"{r['kind']} -> {r['impl']}, {'verified' if r['verified'] else 'WRONG: ' + r['error']}")
    result = {"device": str(fp), "table_shards": [str(p) for p in written],
              "records": [r.to_json() for r in records], "rejected": rejected, "routes": routes + rerouted,
              "generated": generated, "stats": kforge.stats(), "seconds": round(time.perf_counter() - started, 1)}
    ok = all(r["verified"] for r in routes + rerouted)
    if args.json:
        emit_json(result)
    else:
        print_result(result, fp)
    return 0 if ok else 1


def generate_for_misses(specs, device, variants: int) -> list[dict]:
    """`kforge generate --from-misses` for the demo's ops: one catalog round per op over the keys
    its miss log holds; returns each run's JSON."""
    from kforge.evaluate.executors import LocalPoolExecutor
    from kforge.gen import from_misses, run_state, search
    from kforge.gen.providers.catalog import CatalogProvider

    names = {spec.name for spec in specs}
    targets = [t for t in from_misses.targets(str(device)) if t.op in names]
    progress(f"generate --from-misses --provider catalog: {len(targets)} missed key(s), "
             f"{variants} variant(s) per op, candidates verified in sandboxed workers")
    runs = []
    with LocalPoolExecutor() as executor:
        for name in sorted({t.op for t in targets}):
            mine = [t for t in targets if t.op == name]
            shapes = sorted({t.shape for t in mine})
            dtypes = [getattr(torch, d) for d in sorted({t.dtype for t in mine})]
            t0 = time.perf_counter()
            result = search.run(name, CatalogProvider(), run_state.Settings(rounds=1, variants=variants, top_k=1),
                                device=str(device), dtypes=dtypes, shapes=shapes, executor=executor)
            progress(f"generated {name}: {result.accepted}/{result.attempts} candidates accepted, "
                     f"{len(result.keys)} key(s) recorded ({time.perf_counter() - t0:.1f} s, run {result.run_id})"
                     + "".join(f"; not recorded: {k['dtype']} {shape_text(k['shape'])}: {k['why']}"
                               for k in result.unrecorded_keys))
            runs.append(result.to_json())
    return runs


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
    with misses.uncounted():
        now = measure({"kforge": entry, "vendor": spec.vendor}, args)
    speedup = score["vendor"] / score[impl] if "vendor" in score and impl in score else None
    return {"op": spec.name, "dtypes": key.dtypes, "shape": list(shape), "problem": list(key.shape),
            "kind": kind, "from_shape": None if ranking.shape is None else list(ranking.shape), "impl": impl,
            "p50_us": p50, "score_us": score, "now_kforge_us": max(now["kforge"].p50_us, now["kforge"].host_us),
            "now_vendor_us": max(now["vendor"].p50_us, now["vendor"].host_us), "speedup_vs_vendor": speedup,
            "verified": verified, "max_error_ratio": worst, "error": error}


def _backend(impl: str) -> str:
    return impl.split(":", 1)[0]


def _short(impl: str) -> str:
    """"triton:<12 hex>" -> "triton:<8 hex>": the table fits 100 columns (JSON keeps the whole id)."""
    backend, _, ident = impl.partition(":")
    return f"{backend}:{ident[:8]}" if ident else impl


def print_result(result: dict, fp) -> None:
    # One column per backend (its best record), not per kernel: a run with many kernels stays narrow.
    backends = sorted({_backend(i) for r in result["routes"] for i in r["score_us"]},
                      key=lambda b: ("vendor", "inductor", "triton").index(b) if b in ("vendor", "inductor", "triton")
                      else 3)
    rows = []
    for r in result["routes"]:
        if r["kind"] == "hit" and r["from_shape"] != r["problem"]:
            route = f"near {shape_text(r['from_shape'])}"
        else:
            route = r["kind"]
        best = {b: min((us for i, us in r["score_us"].items() if _backend(i) == b), default=None) for b in backends}
        rows.append([r["op"], dtypes_text(r["dtypes"]), shape_text(r["shape"]), route, _short(r["impl"]),
                     *(number(best[b]) for b in backends), number(r["now_kforge_us"]), number(r["now_vendor_us"]),
                     "-" if r["speedup_vs_vendor"] is None else f"{r['speedup_vs_vendor']:.2f}x",
                     f"ok {r['max_error_ratio']:.2f}" if r["verified"] else "WRONG"])
    timing = "CUDA events" if fp.kind == "cuda" else "CPU wall time"
    print(f"\nrouting table on {device_text(str(fp))} ({timing}, microseconds per call)")
    print(render(["op", "dtype", "shape", "route", "chosen", *backends, "now kf", "now vnd", "speedup", "check"], rows,
                 right=tuple(range(5, 5 + len(backends) + 3))))
    print("\nroute: hit = measured shape; near = unseen shape served by the nearest measured one;\n"
          "miss = no record, vendor serves it and the miss log counts it.\n"
          "vendor / inductor / triton: cost per call in the records the router chose from, the best of each\n"
          "backend (p50, or the host time per call where that is slower); now kf / now vnd: this call timed\n"
          "again the same way, through kforge.ops.<op> and as the bare vendor function; speedup: table vendor\n"
          "/ table chosen; check: worst error / budget against the reference.")
    print("\nkforge.stats() (calls in this process, timing loops included)")
    stats = result["stats"]
    print(render(["op", "calls", "hit", "miss", "fallback", "by implementation"],
                 [[op, s["calls"], s["hit"], s["miss"], s["fallback"],
                   ", ".join(f"{i} {n}" for i, n in sorted(s["by_impl"].items()))] for op, s in stats["ops"].items()],
                 right=(1, 2, 3, 4)))
    if stats["disabled"]:
        print("switched off: " + "; ".join(stats["disabled"]))
    for rej in result["rejected"]:
        print(f"rejected in calibration: {rej['impl']} for {rej['key']}: {rej['reason']}")
    for run in result.get("generated", []):
        for k in run["keys"]:
            after = k["after"]
            verdict = ("a generated kernel is now the fastest record" if after["impl"].startswith("triton:")
                       else "vendor stays the fastest record (on a CPU, Triton runs in its interpreter)")
            print(textwrap.fill(f"generated {run['op']} {k['dtype']} {shape_text(k['shape'])}: best kernel "
                                f"{_short(k['kernel']['impl'])} {number(k['kernel']['p50_us'], 1)} us vs vendor "
                                f"{number(k['vendor_p50_us'], 1)} us in the same run: {verdict}", WIDTH,
                                subsequent_indent="  "))
        for k in run.get("unrecorded_keys", []):
            print(textwrap.fill(f"generated {run['op']} {k['dtype']} {shape_text(k['shape'])}: not recorded: "
                                f"{k['why']}", WIDTH, subsequent_indent="  "))
    bad = [r for r in result["routes"] if not r["verified"]]
    print(f"\n{len(result['routes']) - len(bad)}/{len(result['routes'])} routed results match the reference; "
          f"{len(result['records'])} records written; {result['seconds']} s.\n"
          "Next: `kforge table`, `kforge misses`.")
    for r in bad:
        print(f"WRONG: {r['op']} {r['dtypes']} {shape_text(r['shape'])}: {r['error']}")
