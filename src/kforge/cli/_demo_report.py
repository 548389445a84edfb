"""The human output of `kforge demo`: the routing table, the cost per call, kforge.stats(), what
generation recorded, the next steps and where the time went; every line fits 100 columns."""
from __future__ import annotations

import textwrap

from kforge.cli._output import WIDTH, device_text, dtypes_text, number, render, shape_text, wrap


def _backend(impl: str) -> str:
    return impl.split(":", 1)[0]


def short_impl(impl: str) -> str:
    """"triton:<12 hex>" -> "triton:<8 hex>": the table fits 100 columns (JSON keeps the whole id)."""
    backend, _, ident = impl.partition(":")
    return f"{backend}:{ident[:8]}" if ident else impl


# What a user does next: (command, what it does). Printed wrapped to the 100 columns of the output.
NEXT_STEPS = (
    ("kforge table", "what the router now chooses for every key, and why not the others"),
    ("kforge misses", "the calls the table had nothing for, most-called first"),
    ("kforge tune --model llama-3.1-8b --tokens 1,16,512",
     "fill the table for a model on this device: vendor, Inductor and the catalog's kernels verified and "
     "timed at every key of its forward (models: kforge.shapes; --ops, --max-seconds)"),
    ("kforge generate rms_norm --shape 16x4096 --dtype bf16 --provider anthropic --rounds 3",
     "new kernels written by a model (ANTHROPIC_API_KEY), verified and recorded the same way"),
    ('model = torch.compile(model, backend="kforge")',
     "in Python: the model's norms, gates, rotary, MoE router and loss routed by this table; "
     "kforge.explain(model, *inputs) says what was rewritten and why not elsewhere"),
    ("kforge misses --to-issue > body.md",
     "once your own program has run: request a kernel for the op it missed most, as a Kernel request "
     "issue body to file on GitHub (`kforge issue parse --body-file body.md` checks it)"),
)
COMMAND_COLUMN = 32


def next_steps(cpu: bool) -> str:
    """The NEXT_STEPS block; on a CPU with what a GPU would change."""
    pad, lines = " " * COMMAND_COLUMN, ["Next steps"]
    for command, what in NEXT_STEPS:
        head = f"  {command}"
        if len(head) < COMMAND_COLUMN - 1:  # the explanation starts on the command's line
            lines += textwrap.wrap(what, WIDTH, initial_indent=head.ljust(COMMAND_COLUMN), subsequent_indent=pad,
                                   break_on_hyphens=False)
        else:
            lines += [head, *textwrap.wrap(what, WIDTH, initial_indent=pad, subsequent_indent=pad,
                                           break_on_hyphens=False)]
    if cpu:
        lines += textwrap.wrap(
            "On a GPU the same demo times CUDA kernels (events, CUDA graphs) and records them under the GPU's "
            "fingerprint; there generated Triton kernels can beat vendor and then serve the calls "
            "(docs/getting-started-gpu.md).", WIDTH, break_on_hyphens=False)
    return "\n".join(lines)


def print_result(result: dict, fp) -> None:
    # Two tables of at most 100 columns: how each call was routed, then what it costs. One cost
    # column per backend (its best record), not per kernel: a run with many kernels stays narrow.
    backends = sorted({_backend(i) for r in result["routes"] for i in r["score_us"]},
                      key=lambda b: ("vendor", "inductor", "triton").index(b) if b in ("vendor", "inductor", "triton")
                      else 3)
    routing, costs = [], []
    for r in result["routes"]:
        if r["kind"] == "hit" and r["from_shape"] != r["problem"]:
            route = f"near {shape_text(r['from_input_shape'] or r['from_shape'])}"
        else:
            route = r["kind"] if r["case"] != "after generate" else f"{r['kind']} after gen"
        # The primary input's dtype: a whole signature (rotary's "bf16,bf16,int64,fp32") is in --json.
        case = [r["op"], dtypes_text(r["dtypes"].split(",")[0]), shape_text(r["shape"])]
        routing.append([*case, route, short_impl(r["impl"]),
                        "-" if r["speedup_vs_vendor"] is None else f"{r['speedup_vs_vendor']:.2f}x",
                        f"ok {r['max_error_ratio']:.2f}" if r["verified"] else "WRONG"])
        best = {b: min((us for i, us in r["score_us"].items() if _backend(i) == b), default=None) for b in backends}
        costs.append([*case, *(number(best[b]) for b in backends), number(r["now_kforge_us"]),
                      number(r["now_vendor_us"])])
    timing = "CUDA events" if fp.kind == "cuda" else "CPU wall time"
    print(f"\nrouting table on {device_text(str(fp))}")
    print(render(["op", "dtype", "shape", "route", "chosen", "speedup", "check"], routing, right=(5,)))
    print(textwrap.fill(
        "route: hit = measured shape; near = unseen shape served by the nearest measured one; miss = no "
        "record, vendor serves it and the miss log counts it; after gen = the missed shape called again "
        "after generate. speedup: the table's vendor cost / the chosen "
        "one's. check: the worst error / its budget against the fp64 reference.", WIDTH))
    print(f"\ncost per call ({timing}, microseconds)")
    print(render(["op", "dtype", "shape", *backends, "now kf", "now vnd"], costs,
                 right=tuple(range(3, 3 + len(backends) + 2))))
    print(textwrap.fill(
        f"{' / '.join(backends)}: cost per call in the records the router chose from, the best of each backend "
        "(p50, or the host time per call where that is slower); now kf / now vnd: the call timed again the "
        "same way, through kforge.ops.<op> and as the bare vendor function.", WIDTH))
    print("\nkforge.stats() over the whole demo (its timing loops included)")
    stats = result["stats"]
    print(render(["op", "calls", "hit", "miss", "fallback", "by implementation"],
                 [[op, s["calls"], s["hit"], s["miss"], s["fallback"],
                   ", ".join(f"{short_impl(i)} {n}" for i, n in sorted(s["by_impl"].items()))]
                  for op, s in stats["ops"].items()], right=(1, 2, 3, 4)))
    if stats["disabled"]:
        print(wrap("switched off: " + "; ".join(stats["disabled"])))
    for rej in result["rejected"]:
        print(wrap(f"rejected in calibration: {rej['impl']} for {rej['key']}: {rej['reason']}"))
    for run in result.get("generated", []):
        for k in run["keys"]:
            after = k["after"]
            verdict = ("a generated kernel is now the fastest record" if after["impl"].startswith("triton:")
                       else "vendor stays the fastest record (on a CPU, Triton runs in its interpreter)")
            print(wrap(f"generated {run['op']} {k['dtype']} {shape_text(k['shape'])}: best kernel "
                        f"{short_impl(k['kernel']['impl'])} {number(k['kernel']['p50_us'], 1)} us vs vendor "
                        f"{number(k['vendor_p50_us'], 1)} us in the same run: {verdict}"))
        for k in run.get("unrecorded_keys", []):
            print(wrap(f"generated {run['op']} {k['dtype']} {shape_text(k['shape'])}: not recorded: {k['why']}"))
    bad = [r for r in result["routes"] if not r["verified"]]
    ops = sorted({r["op"] for r in result["routes"]})
    print(f"\n{len(result['routes']) - len(bad)}/{len(result['routes'])} routed results of {len(ops)} ops match "
          f"the reference; {len(result['records'])} records written; {result['seconds']} s.")
    for r in bad:
        print(wrap(f"WRONG: {r['op']} {r['dtypes']} {shape_text(r['shape'])}: {r['error']}"))
    print("\n" + next_steps(fp.kind == "cpu"))
    print("\n" + wrap(time_text(result)))


def time_text(result: dict) -> str:
    """Where the demo's time went: its phases, each op's generate run, the process's start before it."""
    per_op = result.get("generate_seconds") or {}
    parts = [f"{name} {seconds:.1f} s" + (" (" + ", ".join(f"{op} {s:.1f}" for op, s in per_op.items()) + ")"
                                          if name == "generate" and per_op else "")
             for name, seconds in result.get("phases", {}).items()]
    before = result.get("process_start_seconds")
    return (f"time: {result['seconds']} s in the demo: " + ", ".join(parts)
            + ("" if before is None else f"; {before:.1f} s before it (Python, torch and kforge imports)"))
