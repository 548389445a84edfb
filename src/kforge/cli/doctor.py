"""kforge doctor: what kforge sees here.

Devices, torch and Triton versions, the Triton interpreter mode, every score-table layer with its
shards, records and health (ok / corrupt / foreign version), the KFORGE_* settings, the miss log,
which backends can run, the isolation sandboxed workers get (bubblewrap, or none: then untrusted
candidates are refused unless --unsafe-no-sandbox), and which LLM provider keys are set (set or
unset only, never a value).
Reads files only; moves nothing aside. Always exits 0.
"""
from __future__ import annotations

import os
import platform
import textwrap

import torch

import kforge
from kforge import paths
from kforge.backends import BACKENDS, BackendName
from kforge.cli._output import WIDTH, emit_json, render
from kforge.device import fingerprint, installed_version
from kforge.errors import TableError
from kforge.evaluate import isolation
from kforge.router import native
from kforge.router import misses
from kforge.router.table import ForeignVersion, Layer, default_layers, parse_table

HELP = "devices, versions, table layers and their health, backends, worker isolation, provider keys"
SETTINGS = ("KFORGE_HOME", "KFORGE_BUNDLED_TABLE", "KFORGE_TABLE", "KFORGE_PIN")
PROVIDER_KEYS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY")


def add_arguments(parser) -> None:
    pass


def devices() -> list[dict]:
    cpu = fingerprint("cpu")
    found = [{"type": "cpu", "name": cpu.name, "arch": cpu.capability, "fingerprint": str(cpu)}]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            found.append({"type": "cuda", "index": index, "name": props.name,
                          "capability": f"sm{props.major}{props.minor}",
                          "memory_gib": round(props.total_memory / 2**30, 1),
                          "fingerprint": str(fingerprint(torch.device("cuda", index)))})
    return found


def file_health(path) -> dict:
    try:
        records, skipped = parse_table(path.read_text(), str(path))
    except ForeignVersion as exc:
        return {"path": str(path), "health": "foreign version", "records": 0, "detail": str(exc)}
    except (TableError, OSError, UnicodeDecodeError) as exc:
        return {"path": str(path), "health": "corrupt", "records": 0, "detail": str(exc)}
    detail = f"{skipped} invalid record(s) skipped" if skipped else ""
    return {"path": str(path), "health": "ok", "records": len(records), "detail": detail}


def layer_report(layer: Layer) -> dict:
    files = [file_health(p) for p in layer.files()]
    healths = {f["health"] for f in files}
    health = "corrupt" if "corrupt" in healths else "foreign version" if "foreign version" in healths else "ok"
    aside = layer.root.parent.glob(layer.root.name + ".*-*") if layer.single_file else layer.root.glob("*/*.json.*-*")
    return {"name": layer.name, "path": str(layer.root), "exists": layer.root.exists(), "writable": layer.writable,
            "shards": len(files), "records": sum(f["records"] for f in files), "health": health,
            "set_aside": sorted(str(p) for p in aside if not p.name.endswith(".lock")), "files": files}


def native_report() -> dict:
    module = native.load()
    return {"loaded": module is not None, "path": module.__file__ if module else None, "why_not": native.why_not()}


def report() -> dict:
    entries = misses.read_all()
    interpret = os.environ.get("TRITON_INTERPRET")
    return {
        "kforge": kforge.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": installed_version("triton"),
        "triton_interpret": {"value": interpret, "on": interpret == "1"},
        "devices": devices(),
        "settings": {name: os.environ.get(name) for name in SETTINGS},
        "home": str(paths.home()),
        "table": {"layers": [layer_report(layer) for layer in default_layers()]},
        "miss_log": {"dir": str(paths.misses_dir()), "exists": paths.misses_dir().is_dir(),
                     "entries": len(entries), "calls": sum(e["misses"] + e["fallbacks"] for e in entries)},
        "backends": [{"name": name.value, "available": name in BACKENDS and BACKENDS[name].available() is None,
                      "reason": "not in this kforge yet" if name not in BACKENDS else BACKENDS[name].available()}
                     for name in BackendName],
        "isolation": isolation.probe().to_json(),
        "native_key": native_report(),
        "provider_keys": {name: "set" if os.environ.get(name) else "unset" for name in PROVIDER_KEYS},
    }


def run(args) -> int:
    r = report()
    if args.json:
        emit_json(r)
        return 0
    interp = r["triton_interpret"]
    print(f"kforge {r['kforge']}  python {r['python']}  torch {r['torch']} (cuda {r['torch_cuda'] or 'none'})  "
          f"triton {r['triton'] or 'not installed'}")
    print(f"TRITON_INTERPRET: {interp['value'] or 'unset'} ({'interpreter on' if interp['on'] else 'off'})")
    print("\ndevices")
    print(render(["type", "name", "capability", "fingerprint"],
                 [[d["type"] + (f":{d['index']}" if "index" in d else ""), d["name"],
                   d.get("capability", d.get("arch")), d["fingerprint"]] for d in r["devices"]]))
    if not any(d["type"] == "cuda" for d in r["devices"]):
        print("(no CUDA device: CPU calls route on CPU records; GPU kernels need a GPU)")
    print("\nscore table (later layers win)")
    print(render(["layer", "exists", "shards", "records", "health", "path"],
                 [[layer["name"], "yes" if layer["exists"] else "no", layer["shards"], layer["records"],
                   layer["health"], layer["path"]] for layer in r["table"]["layers"]], right=(2, 3)))
    for layer in r["table"]["layers"]:
        for f in layer["files"]:
            if f["health"] != "ok" or f["detail"]:
                print(f"  {layer['name']}: {f['path']}: {f['health']}: {f['detail']}")
        for p in layer["set_aside"]:
            print(f"  {layer['name']}: set aside earlier: {p}")
    print("\nsettings")
    for name, value in r["settings"].items():
        print(f"  {name}={value}" if value is not None else f"  {name} unset")
    print(f"  home: {r['home']}")
    ml = r["miss_log"]
    print(f"  miss log: {ml['dir']} ({ml['entries']} keys, {ml['calls']} calls)")
    print("\nbackends")
    for b in r["backends"]:
        state = "available" if b["available"] else "unavailable: " + str(b["reason"])
        print(textwrap.fill(f"{b['name']:<9} {state}", WIDTH, initial_indent="  ", subsequent_indent=" " * 12))
    nk = r["native_key"]
    print("\ncall key")
    hint = "; build it: python -m kforge.router.native build" if "not built" in str(nk["why_not"]) else ""
    print(textwrap.fill(f"native ({nk['path']})" if nk["loaded"] else
                        f"WARNING: Python key: the native one is {nk['why_not']}{hint}. Each routed call "
                        "costs ~1 us more on a slow host", WIDTH,
                        initial_indent="  ", subsequent_indent="    "))
    print("\nworker isolation")
    print(textwrap.fill(isolation.probe().describe(), WIDTH, initial_indent="  ", subsequent_indent="    "))
    print("\nprovider keys")
    for name, state in r["provider_keys"].items():
        print(f"  {name}: {state}")
    return 0
