"""The data model of routing: dispatch keys, call facts, domains, and score-table records.

Pure data with JSON round-trips, validated on construction. `router.table` persists records;
`router.policy` chooses among them; backends read a record's domain and kernel hash.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import re
from typing import Any, Mapping

SCHEMA_VERSION = 2  # 2: shards pool their evidence (router.table.shard_payload); 1 is still read
READABLE_SCHEMA_VERSIONS = (1, 2)  # a kforge of version 1 sets a version-2 shard aside, never rewrites it

Problem = tuple[int, ...]

# An op's name becomes a file name (table shards, the attempts archive, persisted user ops) and a
# torch.library name: lowercase letters, digits and _, starting with a letter, at most 64.
OP_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
DEVICE_KINDS = ("cpu", "cuda")  # the device kinds kforge measures (evaluate.calibrate, roofline)
MAX_FIELD_CHARS = 256  # a device fingerprint, an implementation id, a provider: short names


class RecordError(ValueError):
    """A record field that is not what kforge writes: `field` names it."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def op_name_problem(name: Any) -> str | None:
    """Why `name` cannot be an op's name, or None when it can."""
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    if not OP_NAME.fullmatch(name):
        return (f"{_shown(name)} is not an op name (lowercase letters, digits and _, starting with a letter, "
                "at most 64)")
    return None


def check_op_name(name: Any) -> str:
    """`name` when it is a valid op name; RecordError("op", ...) otherwise. Every path built from
    an op's name goes through here first."""
    problem = op_name_problem(name)
    if problem is not None:
        raise RecordError("op", problem)
    return name


def device_problem(device: Any) -> str | None:
    """Why `device` is not a device fingerprint of a kind kforge knows, or None when it is one."""
    if not isinstance(device, str):
        return f"must be a string, got {type(device).__name__}"
    if len(device) > MAX_FIELD_CHARS or not device.isprintable():
        return f"{_shown(device)} is not a device fingerprint (printable, at most {MAX_FIELD_CHARS} characters)"
    parts = device.split("|")
    if len(parts) != 5 or not parts[3].startswith("torch") or not parts[4].startswith("triton"):
        return f"{_shown(device)} is not a device fingerprint (kind|name|capability|torchX.Y|tritonX.Y)"
    if parts[0] not in DEVICE_KINDS:
        return f"device kind {_shown(parts[0])} is not one of {', '.join(DEVICE_KINDS)}"
    return None


def _shown(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


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
        data = _mapping(data, "domain")
        dtypes = data.get("dtypes")
        if dtypes is not None:
            dtypes = [_text(d, "domain.dtypes") for d in _sequence(dtypes, "domain.dtypes")]
        contiguous = data.get("contiguous", False)
        if not isinstance(contiguous, bool):
            raise RecordError("domain.contiguous", f"must be true or false, got {contiguous!r}")
        dims = {}
        for name, bounds in _mapping(data.get("dims", {}), "domain.dims").items():
            bounds = _sequence(bounds, f"domain.dims.{name}")
            dims[_text(name, "domain.dims")] = tuple(_int(b, f"domain.dims.{name}") for b in bounds)
        return cls(dtypes=dtypes, contiguous=contiguous, align=_int(data.get("align", 1), "domain.align"), dims=dims)


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
        data = _mapping(data, "evidence")
        return cls(dtypes=[_text(d, "evidence.dtypes") for d in _sequence(_get(data, "dtypes", "evidence"),
                                                                          "evidence.dtypes")],
                   shapes=[_shape(s, "evidence.shapes") for s in _sequence(_get(data, "shapes", "evidence"),
                                                                           "evidence.shapes")],
                   seeds=[_int(s, "evidence.seeds") for s in _sequence(_get(data, "seeds", "evidence"), "evidence.seeds")],
                   max_error_ratio=_number(_get(data, "max_error_ratio", "evidence"), "evidence.max_error_ratio"))


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
    def from_json(cls, data: Mapping[str, Any], evidence: Evidence | None = None) -> "Record":
        """The record `to_json` wrote. Every field is checked for its type (a table file may come
        from anywhere: `kforge table --import`, KFORGE_TABLE): RecordError names the first wrong one.
        evidence: already parsed (a table's pooled entry, checked once for all its records), in
        place of the record's own."""
        data = _mapping(data, "record")
        device = _get(data, "device")
        problem = device_problem(device)
        if problem is not None:
            raise RecordError("device", problem)
        dtypes = _text(_get(data, "dtypes"), "dtypes")
        if not _DTYPES.fullmatch(dtypes):
            raise RecordError("dtypes", f"{_shown(dtypes)} is not a dtype signature like 'bfloat16,bfloat16'")
        t = _mapping(_get(data, "time_us"), "time_us")
        source_sha256 = data.get("source_sha256")
        if source_sha256 is not None and not (isinstance(source_sha256, str) and _SHA256.fullmatch(source_sha256)):
            raise RecordError("source_sha256", f"must be null or 64 lowercase hex digits, got {source_sha256!r}")
        versions = {_text(k, "versions"): _text(v, "versions") for k, v in
                    _mapping(data.get("versions", {}), "versions").items()}
        return cls(
            key=DispatchKey(check_op_name(_get(data, "op")), device, dtypes, _shape(_get(data, "shape"), "shape")),
            impl=_text(_get(data, "impl"), "impl"), backend=_text(_get(data, "backend"), "backend"),
            p20_us=_number(_get(t, "p20", "time_us"), "time_us.p20"),
            p50_us=_number(_get(t, "p50", "time_us"), "time_us.p50"),
            p80_us=_number(_get(t, "p80", "time_us"), "time_us.p80"), host_us=_number(_get(data, "host_us"), "host_us"),
            timing=_text(_get(data, "timing"), "timing"), gbps=_number(data.get("gbps"), "gbps", optional=True),
            tflops=_number(data.get("tflops"), "tflops", optional=True),
            ceiling_fraction=_number(data.get("ceiling_fraction"), "ceiling_fraction", optional=True),
            evidence=evidence or Evidence.from_json(_get(data, "evidence")), domain=Domain.from_json(data.get("domain", {})),
            source_sha256=source_sha256, provider=_text(data.get("provider", "builtin"), "provider"),
            attempt_id=None if data.get("attempt_id") is None else _text(data["attempt_id"], "attempt_id"),
            versions=versions, timestamp=_text(data.get("timestamp", ""), "timestamp"),
        )


# -- strict readers of JSON values (a record's fields) ---------------------------------------------
_DTYPES = re.compile(r"[a-z0-9_]+(,[a-z0-9_]+)*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_DIMS = 16
MAX_ITEMS = 4096  # evidence shapes or seeds, domain dtypes: kforge writes a few dozen


def _get(data: Mapping, name: str, parent: str | None = None) -> Any:
    try:
        return data[name]
    except KeyError:
        raise RecordError(f"{parent}.{name}" if parent else name, "is missing") from None


def _mapping(value: Any, field: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise RecordError(field, f"must be an object, got {type(value).__name__}")
    return value


def _sequence(value: Any, field: str) -> list | tuple:
    if not isinstance(value, (list, tuple)) or len(value) > MAX_ITEMS:
        raise RecordError(field, f"must be a list of at most {MAX_ITEMS} items, got {type(value).__name__}")
    return value


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_FIELD_CHARS or not value.isprintable():
        shown = _shown(value) if isinstance(value, str) else type(value).__name__
        raise RecordError(field, f"must be printable text of at most {MAX_FIELD_CHARS} characters, got {shown}")
    return value


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -2**63 <= value < 2**63:
        raise RecordError(field, f"must be a 64-bit integer, got {value!r:.60}")
    return value


def _number(value: Any, field: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RecordError(field, f"must be a finite number, got {value!r:.60}")
    return float(value)


def _shape(value: Any, field: str) -> Problem:
    dims = _sequence(value, field)
    if len(dims) > MAX_DIMS or any(_int(d, field) < 0 for d in dims):
        raise RecordError(field, f"must be at most {MAX_DIMS} non-negative dims, got {value!r:.60}")
    return tuple(dims)
