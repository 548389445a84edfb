"""What `kforge.patch` did to a model: each replacement made, each candidate left and why."""
from __future__ import annotations

import collections
import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Entry:
    kind: str  # "norm", "mlp", "rotary", "router" or "loss"
    where: str  # the module's path in the model ("model.layers.0.input_layernorm"), or the function's module
    op: str  # the kforge op it routes through ("rms_norm"), or "" for a candidate left
    note: str  # for a replacement, how; for a candidate left, why (a sentence a user reads)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class PatchReport:
    model: str  # the model's class name
    model_type: str  # its config's model_type ("" without a config)
    patched: list[Entry] = dataclasses.field(default_factory=list)
    left: list[Entry] = dataclasses.field(default_factory=list)
    message: str = ""  # set when the whole model was left (an unknown class, a model already patched...)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "model_type": self.model_type, "message": self.message,
                "patched": [e.to_dict() for e in self.patched], "left": [e.to_dict() for e in self.left]}

    def counts(self) -> dict[str, int]:
        """Replacements per kforge op."""
        return dict(collections.Counter(e.op for e in self.patched))

    def __str__(self) -> str:
        head = f"kforge.patch({self.model}): {len(self.patched)} patched, {len(self.left)} left"
        if self.message:
            head += f"; {self.message}"
        lines = [head]
        # One line per (op, note) group, not per module: a 32-layer model has 65 norms.
        for (op, note), entries in _groups(self.patched).items():
            lines.append(f"  patched {op:<17} x{len(entries):<3} {note}")
            lines.append(f"          e.g. {entries[0].where}")
        for (kind, note), entries in _groups(self.left, by_kind=True).items():
            lines.append(f"  left    {kind:<17} x{len(entries):<3} {note}")
            lines.append(f"          e.g. {entries[0].where}")
        return "\n".join(lines)


def _groups(entries: list[Entry], by_kind: bool = False) -> dict[tuple[str, str], list[Entry]]:
    groups: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        groups.setdefault((e.kind if by_kind else e.op, e.note), []).append(e)
    return groups
