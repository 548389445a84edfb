"""The data model of routing: dispatch keys, call facts, domains, and score-table records.

Pure data with JSON round-trips, validated on construction. `router.table` persists records;
`router.policy` chooses among them; backends read a record's domain and kernel hash.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from typing import Any, Mapping

SCHEMA_VERSION = 1

Problem = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class DispatchKey:
    """(op, device fingerprint, dtype signature, problem shape): what a record is about."""

    op: str
    device: str  # str(DeviceFingerprint)
    dtypes: str  # dtype of each tensor argument, comma separated: "bfloat16,bfloat16"
    shape: Problem  # the op's problem dims, e.g. (rows, hidden)

    def __str__(self) -> str:
        return f"{self.op}[{self.dtypes}]{'x'.join(map(str, self.shape))}@{self.device}"


@dataclasses.dataclass(frozen=True)
class CallInfo:
    """What the router knows about one call signature when it decides (cold path only)."""

    key: DispatchKey
    contiguous: bool  # every tensor argument contiguous
    aligned: int  # largest power of two <= 16 dividing every tensor argument's address
    requires_grad: bool


@dataclasses.dataclass(frozen=True)
class Domain:
    """Where an implementation is valid. Outside it the router takes the next candidate."""

    dtypes: tuple[str, ...] | None = None  # dtype signatures accepted; None: all
    contiguous: bool = False  # requires every tensor argument contiguous
    align: int = 1  # required byte alignment of every tensor argument's address
    dims: Mapping[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # name -> [lo, hi]

    def __post_init__(self) -> None:
        if self.align not in (1, 2, 4, 8, 16):
            raise ValueError(f"domain align must be 1, 2, 4, 8 or 16 bytes, got {self.align}")
        for name, bounds in self.dims.items():
            if len(bounds) != 2 or bounds[0] > bounds[1]:
                raise ValueError(f"domain dims[{name!r}] must be [lo, hi] with lo <= hi, got {bounds}")
        object.__setattr__(self, "dims", {k: (int(v[0]), int(v[1])) for k, v in self.dims.items()})
        if self.dtypes is not None:
            object.__setattr__(self, "dtypes", tuple(self.dtypes))

    def rejects(self, call: CallInfo, problem_dims: tuple[str, ...]) -> str | None:
        """Why `call` is outside this domain, or None when it is inside."""
        if self.dtypes is not None and call.key.dtypes not in self.dtypes:
            return f"dtypes {call.key.dtypes} not in {list(self.dtypes)}"
        if self.contiguous and not call.contiguous:
            return "needs contiguous inputs"
        if call.aligned < self.align:
            return f"needs {self.align}-byte aligned inputs, got {call.aligned}"
        for name, (lo, hi) in self.dims.items():
            if name not in problem_dims:
                return f"domain names unknown dim {name!r}"
            value = call.key.shape[problem_dims.index(name)]
            if not lo <= value <= hi:
                return f"{name}={value} outside [{lo}, {hi}]"
        return None

    def to_json(self) -> dict:
        return {"dtypes": None if self.dtypes is None else list(self.dtypes), "contiguous": self.contiguous,
                "align": self.align, "dims": {k: list(v) for k, v in self.dims.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Domain":
        return cls(dtypes=data.get("dtypes"), contiguous=bool(data.get("contiguous", False)),
                   align=int(data.get("align", 1)), dims={k: tuple(v) for k, v in data.get("dims", {}).items()})


@dataclasses.dataclass(frozen=True)
class Evidence:
    """How an implementation was proven correct: what was checked and how close it came."""

    dtypes: tuple[str, ...]  # dtype signatures verified
    shapes: tuple[Problem, ...]  # problems verified
    seeds: tuple[int, ...]
    max_error_ratio: float  # worst error / budget seen; must be <= 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtypes", tuple(self.dtypes))
        object.__setattr__(self, "shapes", tuple(tuple(int(d) for d in s) for s in self.shapes))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.dtypes or not self.shapes or not self.seeds:
            raise ValueError("evidence needs at least one dtype signature, shape and seed")
        if not (math.isfinite(self.max_error_ratio) and 0 <= self.max_error_ratio <= 1):
            raise ValueError(f"evidence max_error_ratio must be in [0, 1], got {self.max_error_ratio}")

    def covers(self, key: DispatchKey, exact_idx: tuple[int, ...]) -> bool:
        """True when this evidence verified `key`'s dtypes at `key`'s exact dims (the dims kernels
        specialise on); how far it reaches on the other dims is `router.key.reaches`."""
        if key.dtypes not in self.dtypes:
            return False
        want = tuple(key.shape[i] for i in exact_idx)
        return any(tuple(s[i] for i in exact_idx) == want for s in self.shapes if len(s) == len(key.shape))

    def to_json(self) -> dict:
        return {"dtypes": list(self.dtypes), "shapes": [list(s) for s in self.shapes], "seeds": list(self.seeds),
                "max_error_ratio": self.max_error_ratio}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Evidence":
        return cls(dtypes=data["dtypes"], shapes=data["shapes"], seeds=data["seeds"],
                   max_error_ratio=float(data["max_error_ratio"]))


TIMING_KINDS = ("cuda_events", "cuda_graph", "cpu_wall")


@dataclasses.dataclass(frozen=True)
class Record:
    """One measured implementation for one dispatch key."""

    key: DispatchKey
    impl: str  # implementation id: "vendor", "inductor", "triton:<sha256 prefix>"
    backend: str  # backend name; records of backends this kforge lacks are skipped, not dropped
    p20_us: float
    p50_us: float
    p80_us: float
    host_us: float  # host time per call of the implementation (the router's own cost is the same for all)
    timing: str  # one of TIMING_KINDS
    evidence: Evidence
    domain: Domain = dataclasses.field(default_factory=Domain)
    gbps: float | None = None
    tflops: float | None = None
    ceiling_fraction: float | None = None  # achieved bandwidth (or FLOP rate) over the device's
    source_sha256: str | None = None
    provider: str = "builtin"
    attempt_id: str | None = None
    versions: Mapping[str, str] = dataclasses.field(default_factory=dict)  # torch, triton, gpu, kforge
    timestamp: str = ""

    def __post_init__(self) -> None:
        for name in ("p20_us", "p50_us", "p80_us", "host_us"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"record {self.impl} for {self.key}: {name} must be a finite number >= 0, got {value!r}")
        if not self.p20_us <= self.p50_us <= self.p80_us:
            raise ValueError(f"record {self.impl} for {self.key}: needs p20 <= p50 <= p80")
        if self.timing not in TIMING_KINDS:
            raise ValueError(f"record {self.impl}: timing {self.timing!r} not one of {TIMING_KINDS}")
        if not self.impl or not self.backend:
            raise ValueError("record needs an implementation id and a backend")
        if not self.timestamp:
            object.__setattr__(self, "timestamp", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    @property
    def ident(self) -> tuple[DispatchKey, str]:
        """One record per (key, implementation): a newer one replaces the older."""
        return (self.key, self.impl)

    @property
    def score_us(self) -> float:
        """End-to-end cost per call: launches are asynchronous, so a stream of calls runs at the
        slower of the host's cost per call and the device time."""
        return max(self.p50_us, self.host_us)

    def to_json(self) -> dict:
        return {
            "op": self.key.op, "device": self.key.device, "dtypes": self.key.dtypes, "shape": list(self.key.shape),
            "impl": self.impl, "backend": self.backend,
            "time_us": {"p20": self.p20_us, "p50": self.p50_us, "p80": self.p80_us}, "host_us": self.host_us,
            "timing": self.timing, "gbps": self.gbps, "tflops": self.tflops, "ceiling_fraction": self.ceiling_fraction,
            "evidence": self.evidence.to_json(), "domain": self.domain.to_json(),
            "source_sha256": self.source_sha256, "provider": self.provider, "attempt_id": self.attempt_id,
            "versions": dict(self.versions), "timestamp": self.timestamp,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Record":
        t = data["time_us"]
        return cls(
            key=DispatchKey(str(data["op"]), str(data["device"]), str(data["dtypes"]), tuple(int(d) for d in data["shape"])),
            impl=str(data["impl"]), backend=str(data["backend"]),
            p20_us=float(t["p20"]), p50_us=float(t["p50"]), p80_us=float(t["p80"]), host_us=float(data["host_us"]),
            timing=str(data["timing"]), gbps=data.get("gbps"), tflops=data.get("tflops"),
            ceiling_fraction=data.get("ceiling_fraction"), evidence=Evidence.from_json(data["evidence"]),
            domain=Domain.from_json(data.get("domain", {})), source_sha256=data.get("source_sha256"),
            provider=str(data.get("provider", "builtin")), attempt_id=data.get("attempt_id"),
            versions=dict(data.get("versions", {})), timestamp=str(data.get("timestamp", "")),
        )
