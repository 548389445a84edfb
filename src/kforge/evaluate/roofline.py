"""Roofline: the device's measured ceilings, and where a result sits under them.

    c = ceilings("cuda")                      # measured once per device fingerprint, then cached
    r = classify(bytes_moved, flops, p50_us, c)
    r.bound, r.gbps, r.fraction_of_ceiling    # "memory" | "compute" | "latency"
    implausible(p50_us, r.floor_us)           # True: faster than physics allows, re-verify

Ceilings are measured, not read off a datasheet (METHOD.md): on CUDA a large device-to-device copy
(bytes read plus bytes written) and a large bf16 matrix product; on a CPU a copy and an fp32
matrix product, small and cheap, labelled `kind="cpu"` (their fingerprint is the CPU's, so they
never stand for a GPU). Other device types get None. Cached in `kforge.paths.home()/ceilings.json`,
one entry per device fingerprint, written under a lock, atomically; an unreadable cache is set
aside with a warning and measured again.

Classification rule (`classify`), with floor = max(bytes / copy rate, flops / matmul rate), the
least time any implementation can take:
- "latency" when time_us < `LATENCY_US` (5 us: the order of a kernel launch and its ramp-up), or
  when the problem is tiny (floor < `LATENCY_US`) and the floor explains less than
  `LATENCY_FLOOR_SHARE` (a quarter) of the time: fixed costs, not bytes or FLOPs, set it;
- otherwise "memory" when the bytes term of the floor is the larger, else "compute".
The matmul ceiling is bf16 even for fp32 ops, so fp32 compute floors err low: `implausible` then
errs towards accepting, never towards rejecting an honest kernel.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import warnings
from pathlib import Path
from typing import Literal

import torch

from kforge import paths
from kforge.device import fingerprint
from kforge.files import atomic_write_json, lock_for, move_aside, read_json

SCHEMA_VERSION = 1
LATENCY_US = 5.0
LATENCY_FLOOR_SHARE = 0.25
IMPLAUSIBLE_BELOW = 0.8  # a time under 80% of the floor is over 1.25x a measured ceiling

# CUDA: 1 GiB copied (2 GiB through memory), 8192^3 bf16 product: both far beyond the L2 and
# long enough (~1 ms) that launch gaps vanish. Measured after a short warm-up, so the matmul rate
# is the burst rate: on an H100 (2026-11-22) 670-734 TFLOP/s, but 570-690 under seconds of
# sustained products (power-limited clocks); copy 3.0 TB/s. The higher ceiling makes
# `implausible` err towards accepting. CPU: 64 MiB and 1024^3 fp32, under a second in all.
CUDA_COPY_BYTES = 1 << 30
CUDA_MATMUL_N = 8192
CPU_COPY_BYTES = 64 << 20
CPU_MATMUL_N = 1024

Bound = Literal["memory", "compute", "latency"]


@dataclasses.dataclass(frozen=True)
class Ceilings:
    """Measured rates of one device. copy_gbps counts bytes read plus bytes written."""

    copy_gbps: float
    matmul_tflops: float
    device: str  # str(DeviceFingerprint)
    measured_at: str  # ISO timestamp, UTC
    kind: str = "cuda"  # "cuda", or "cpu": CPU ceilings, never GPU numbers
    matmul_dtype: str = "bfloat16"  # "float32" on a CPU

    def __post_init__(self) -> None:
        for name in ("copy_gbps", "matmul_tflops"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and value != float("inf")):
                raise ValueError(f"ceilings {name} must be a positive finite number, got {value!r}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Ceilings":
        return cls(copy_gbps=float(data["copy_gbps"]), matmul_tflops=float(data["matmul_tflops"]),
                   device=str(data["device"]), measured_at=str(data["measured_at"]),
                   kind=str(data.get("kind", "cuda")), matmul_dtype=str(data.get("matmul_dtype", "bfloat16")))


@dataclasses.dataclass(frozen=True)
class RooflineResult:
    """Where one measured time sits under the ceilings."""

    gbps: float  # bytes moved / time
    tflops: float  # flops / time
    fraction_of_ceiling: float  # floor / time: 1.0 means at the binding ceiling
    bound: Bound
    floor_us: float


def floor_us(nbytes: float, flops: float, ceilings: Ceilings) -> float:
    """Least microseconds the problem can take: the larger of its bytes at the copy rate and its
    FLOPs at the matmul rate."""
    return max(_memory_us(nbytes, ceilings), _compute_us(flops, ceilings))


def classify(nbytes: float, flops: float, time_us: float, ceilings: Ceilings) -> RooflineResult:
    """Achieved rates, fraction of the binding ceiling and the bound class (see the module
    docstring for the rule) of a problem moving `nbytes` and doing `flops` in `time_us`."""
    if not time_us > 0:
        raise ValueError(f"classify needs a positive time, got {time_us}")
    memory, compute = _memory_us(nbytes, ceilings), _compute_us(flops, ceilings)
    floor = max(memory, compute)
    if time_us < LATENCY_US or (floor < LATENCY_US and floor < LATENCY_FLOOR_SHARE * time_us):
        bound: Bound = "latency"
    else:
        bound = "memory" if memory >= compute else "compute"
    return RooflineResult(gbps=nbytes / time_us / 1e3, tflops=flops / time_us / 1e6,
                          fraction_of_ceiling=floor / time_us, bound=bound, floor_us=floor)


def implausible(time_us: float, floor: float, *, below: float = IMPLAUSIBLE_BELOW) -> bool:
    """True when `time_us` beats the roofline floor by more than the margin (`time_us < below *
    floor`): the measured ceilings are the vendor's best copy and matmul, which honest kernels
    pass by a few percent at most. The harness re-verifies such a result (replayed or cached
    results, work left unfinished or off the timed stream) and rejects it if it does not hold."""
    return floor > 0 and time_us < below * floor


def _memory_us(nbytes: float, c: Ceilings) -> float:
    return nbytes / (c.copy_gbps * 1e3)  # GB/s = 1e3 bytes/us


def _compute_us(flops: float, c: Ceilings) -> float:
    return flops / (c.matmul_tflops * 1e6)  # TFLOP/s = 1e6 flop/us


# -- measured ceilings, cached --------------------------------------------------------------------
def cache_file() -> Path:
    return paths.home() / "ceilings.json"


def ceilings(device: torch.device | str = "cuda") -> Ceilings | None:
    """The ceilings of `device`: cached for its fingerprint, or measured now (tens of ms on a CPU,
    about a second on a GPU) and cached. None for device types other than cuda and cpu."""
    device = torch.device(device)
    if device.type not in ("cuda", "cpu"):
        return None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = str(fingerprint(device))
    path = cache_file()
    found = _read(path, lock_held=False).get(key)
    if found is not None:
        return found
    with lock_for(path):
        entries = _read(path, lock_held=True)  # another process may have measured meanwhile
        if key in entries:
            return entries[key]
        measured = measure_ceilings(device)
        entries[key] = measured
        atomic_write_json(path, {"schema_version": SCHEMA_VERSION,
                                 "ceilings": {k: c.to_json() for k, c in sorted(entries.items())}})
    return measured


def measure_ceilings(device: torch.device | str) -> Ceilings:
    """Measure the copy and matmul ceilings of a cuda or cpu device now (no cache)."""
    from kforge.evaluate import timing

    device = torch.device(device)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    fp = str(fingerprint(device))
    if device.type == "cuda":
        src = torch.randint(0, 255, (CUDA_COPY_BYTES,), dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        copy = timing.time_cuda(lambda x: dst.copy_(x), (src,), flush_l2=False, warmup=3)
        n = CUDA_MATMUL_N
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)  # never zeros: they run faster
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        matmul = timing.time_cuda(lambda x: torch.mm(x, b), (a,), flush_l2=False, warmup=3)
        return Ceilings(copy_gbps=2 * CUDA_COPY_BYTES / copy.p50_us / 1e3,
                        matmul_tflops=2 * n ** 3 / matmul.p50_us / 1e6, device=fp, measured_at=now)
    if device.type != "cpu":
        raise ValueError(f"ceilings are measured on cuda and cpu devices, got {device}")
    src = torch.randint(0, 255, (CPU_COPY_BYTES,), dtype=torch.uint8)
    dst = torch.empty_like(src)
    n = CPU_MATMUL_N
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = timing.time_cpu({"copy": lambda: dst.copy_(src), "matmul": lambda: torch.mm(a, b)}, (),
                        samples=5, sample_s=0.02)
    return Ceilings(copy_gbps=2 * CPU_COPY_BYTES / t["copy"].p50_us / 1e3,
                    matmul_tflops=2 * n ** 3 / t["matmul"].p50_us / 1e6, device=fp, measured_at=now,
                    kind="cpu", matmul_dtype="float32")


def _read(path: Path, *, lock_held: bool) -> dict[str, Ceilings]:
    """Cached entries by fingerprint; {} when absent. An unreadable file is set aside (with the
    lock held; without it, treated as empty until a locked reader sees it)."""
    try:
        data = read_json(path)
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}")
        return {key: Ceilings.from_json(entry) for key, entry in data["ceilings"].items()}
    except FileNotFoundError:
        return {}
    except Exception as exc:  # corrupt or foreign: measure again rather than fail
        if lock_held and path.exists():
            aside = move_aside(path, "corrupt")
            warnings.warn(f"kforge: device ceilings cache {path} unreadable ({type(exc).__name__}: {exc}); "
                          f"moved to {aside.name}, measuring again", stacklevel=3)
        return {}
