"""Device fingerprints: what a score-table record was measured on.

A fingerprint names the device model (GPU name and compute capability, or the CPU model and
architecture) and the torch and Triton major.minor versions that compiled and ran the kernels.
Patch versions are left out so a bundled table serves every patch release of the same line.
Computing one never initialises CUDA unless a CUDA tensor already exists (we only ask about the
device of a tensor the caller handed us).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import platform
import re
from importlib import metadata

import torch


def _major_minor(version: str | None) -> str:
    if not version:
        return "none"
    m = re.match(r"(\d+)\.(\d+)", version)
    return f"{m.group(1)}.{m.group(2)}" if m else version


def installed_version(dist: str) -> str | None:
    """Version of an installed distribution, without importing it (importing triton costs ~1 s)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@dataclasses.dataclass(frozen=True)
class DeviceFingerprint:
    kind: str  # "cuda", "cpu", ...
    name: str  # "NVIDIA H100 80GB HBM3", "AMD EPYC 7B13"
    capability: str  # "sm90" for CUDA; the machine architecture for CPUs
    torch: str  # major.minor
    triton: str  # major.minor, "none" when not installed

    def __str__(self) -> str:
        return f"{self.kind}|{self.name}|{self.capability}|torch{self.torch}|triton{self.triton}"

    @property
    def slug(self) -> str:
        return slug(str(self))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def parse(cls, text: str) -> "DeviceFingerprint":
        parts = text.split("|")
        if len(parts) != 5 or not parts[3].startswith("torch") or not parts[4].startswith("triton"):
            raise ValueError(f"not a device fingerprint: {text!r}")
        return cls(parts[0], parts[1], parts[2], parts[3][len("torch"):], parts[4][len("triton"):])


def slug(fingerprint: str) -> str:
    """A file-name-safe, stable name for a fingerprint string (table and miss-log shards)."""
    readable = re.sub(r"[^A-Za-z0-9]+", "-", fingerprint.rsplit("|", 2)[0]).strip("-")
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:10]
    return f"{readable[:60]}-{digest}"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


@functools.lru_cache(maxsize=None)
def _fingerprint(kind: str, index: int | None) -> DeviceFingerprint:
    torch_v = _major_minor(torch.__version__)
    triton_v = _major_minor(installed_version("triton"))
    if kind == "cuda":
        idx = torch.cuda.current_device() if index is None else index
        props = torch.cuda.get_device_properties(idx)
        return DeviceFingerprint("cuda", props.name, f"sm{props.major}{props.minor}", torch_v, triton_v)
    if kind == "cpu":
        return DeviceFingerprint("cpu", cpu_name(), platform.machine() or "unknown", torch_v, triton_v)
    return DeviceFingerprint(kind, kind, "unknown", torch_v, triton_v)


def fingerprint(device: torch.device | str) -> DeviceFingerprint:
    """Fingerprint of `device` (cached per device)."""
    device = torch.device(device)
    return _fingerprint(device.type, device.index)
