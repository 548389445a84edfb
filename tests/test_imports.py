"""`import kforge` is lean: checked in a fresh interpreter (torchao's test_lean_import).

It initialises no CUDA, imports no LLM SDK, no Ray, not triton and none of kforge's offline side,
compiles nothing, touches no network, and reads no score table: a garbage KFORGE_TABLE file and a
garbage user shard stay unread, unwarned and untouched until the first call of an op (which then
finds them: the trap is live). Its import time on top of torch's is bounded.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kforge.device import fingerprint, slug

NOT_IMPORTED = ("anthropic", "openai", "ray", "triton", "torch._inductor",
                "kforge.cli", "kforge.evaluate", "kforge.gen", "kforge.compile", "kforge.issues")
GARBAGE = b"\x00{ this is not a kforge table \xff"
IMPORT_OVERHEAD_LIMIT_S = 1.0  # import kforge on top of import torch, on a slow shared CI host


def run_python(code: str, env: dict[str, str], timeout: float = 120) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON object as its last line."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KFORGE_", "TORCH_LOGS"))}
    env.update(extra)
    return env


LEAN_IMPORT = r"""
    import json, os, sys, warnings

    watched = (os.environ["KFORGE_HOME"], os.environ["KFORGE_TABLE"])
    events = {"opened": [], "network": [], "spawned": []}

    def audit(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            if path.startswith(watched):
                events["opened"].append(path)
        elif event.startswith("socket.") and event != "socket.__new__":
            events["network"].append(event)
        elif event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn"):
            events["spawned"].append(event)

    sys.addaudithook(audit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import kforge
        import torch
    from kforge.router.dispatch import ROUTER

    after_import = {
        "cuda_initialized": torch.cuda.is_initialized(),
        "imported": sorted(m for m in NOT_IMPORTED if m in sys.modules),
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
        "events": {k: list(v) for k, v in events.items()},
        "table_files_read": [str(p) for p in ROUTER.table._files],
        "table_layers_resolved": ROUTER.table._layers is not None,
    }

    # The trap is live: the first call of an op reads both files and warns about them.
    events["opened"].clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = torch.randn(4, 64)
        y = kforge.ops.rms_norm(x, torch.ones(64), 1e-6)
    after_call = {
        "served": bool(torch.allclose(y, torch.rms_norm(x, (64,), torch.ones(64), 1e-6))),
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
        "opened": list(events["opened"]),
    }
    print(json.dumps({"after_import": after_import, "after_call": after_call}))
"""


@pytest.fixture
def garbage_tables(tmp_path):
    """A KFORGE_HOME whose user shard for (this CPU, rms_norm) is garbage, and a garbage KFORGE_TABLE."""
    home = tmp_path / "home"
    shard = home / "table" / slug(str(fingerprint("cpu"))) / "rms_norm.json"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(GARBAGE)
    extra = tmp_path / "extra-table.json"
    extra.write_bytes(GARBAGE)
    return home, shard, extra


def _snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


def test_import_is_lean_and_reads_no_table(garbage_tables, tmp_path):
    home, shard, extra = garbage_tables
    before = _snapshot(tmp_path)
    code = f"NOT_IMPORTED = {NOT_IMPORTED!r}\n" + textwrap.dedent(LEAN_IMPORT)
    result = run_python(code, clean_env(KFORGE_HOME=str(home), KFORGE_TABLE=str(extra)))

    imp = result["after_import"]
    assert imp["cuda_initialized"] is False
    assert imp["imported"] == [], f"import kforge imported {imp['imported']}"
    assert imp["warnings"] == [], f"import kforge warned: {imp['warnings']}"
    assert imp["events"] == {"opened": [], "network": [], "spawned": []}, imp["events"]
    assert imp["table_files_read"] == [] and not imp["table_layers_resolved"], imp

    # The files were there to be read: the first call reads both, warns, and still serves.
    call = result["after_call"]
    assert call["served"]
    assert str(shard) in call["opened"] and str(extra) in call["opened"], call["opened"]
    warned = "\n".join(call["warnings"])
    assert str(shard) in warned and str(extra) in warned, warned

    # Only the call touched them: the garbage user shard was moved aside by it, and by nothing else.
    after = _snapshot(tmp_path)
    assert after[str(extra)] == before[str(extra)]
    assert str(shard) not in after and any(".corrupt" in p for p in after), sorted(after)


IMPORT_TIME = r"""
    import json, time
    t0 = time.perf_counter()
    import torch
    t1 = time.perf_counter()
    import kforge
    t2 = time.perf_counter()
    print(json.dumps({"torch_s": t1 - t0, "kforge_s": t2 - t1}))
"""


def test_import_time_on_top_of_torch(tmp_path, record_property):
    env = clean_env(KFORGE_HOME=str(tmp_path / "home"))
    runs = [run_python(IMPORT_TIME, env) for _ in range(2)]  # the min of two: the host is shared
    torch_s = min(r["torch_s"] for r in runs)
    kforge_s = min(r["kforge_s"] for r in runs)
    record_property("import_torch_s", round(torch_s, 4))
    record_property("import_kforge_on_top_s", round(kforge_s, 4))
    assert kforge_s < IMPORT_OVERHEAD_LIMIT_S, f"import kforge took {kforge_s:.3f} s on top of import torch ({torch_s:.3f} s)"
