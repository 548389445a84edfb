"""The "Kernel request" issue form as data: its fields in the order GitHub renders them.

`.github/ISSUE_TEMPLATE/kernel-request.yml` is the form GitHub shows; this module is what the
parser and the renderer key on (the `### <label>` headings of the body GitHub renders from it).
tests/test_issue_parse.py checks that the two agree: ids, labels, kinds and options.
"""
from __future__ import annotations

import dataclasses
import enum


class Kind(str, enum.Enum):
    """GitHub issue-form field types, and how each renders into the body."""

    DROPDOWN = "dropdown"  # the chosen option(s), comma separated
    INPUT = "input"  # the text as typed
    TEXTAREA = "textarea"  # the text as typed; inside a ```<render> fence when the field has `render`
    CHECKBOXES = "checkboxes"  # one `- [X] option` / `- [ ] option` line per option


class TargetGpu(str, enum.Enum):
    H100 = "H100"
    H200 = "H200"
    A100 = "A100"
    ANY = "any"


class Goal(str, enum.Enum):
    LATENCY = "latency"  # one call as fast as possible (small batches, decode)
    THROUGHPUT = "throughput"  # the most work per second (large batches, prefill, training)


FORM_VERSION = 1
LABEL = "kernel-request"  # the issue label the form applies and the workflow runs on
# The short dtype names the form offers, and the canonical names they stand for.
DTYPE_OPTIONS = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclasses.dataclass(frozen=True)
class Field:
    id: str  # the form's field id, and the KernelRequest attribute it fills
    label: str  # rendered as the `### <label>` heading
    kind: Kind
    options: tuple[str, ...] = ()
    render: str | None = None  # textareas: the fence language GitHub wraps the value in

    def __post_init__(self) -> None:
        if self.kind in (Kind.DROPDOWN, Kind.CHECKBOXES) and not self.options:
            raise ValueError(f"form field {self.id!r}: a {self.kind.value} needs options")
        if self.render is not None and self.kind is not Kind.TEXTAREA:
            raise ValueError(f"form field {self.id!r}: only a textarea renders in a fence")


FIELDS = (
    Field("version", "Form version", Kind.DROPDOWN, (str(FORM_VERSION),)),
    Field("op", "Op", Kind.INPUT),
    Field("reference", "Reference", Kind.TEXTAREA, render="python"),
    Field("shapes", "Shapes", Kind.TEXTAREA),
    Field("dtypes", "Dtypes", Kind.CHECKBOXES, tuple(DTYPE_OPTIONS)),
    Field("gpu", "Target GPU", Kind.DROPDOWN, tuple(g.value for g in TargetGpu)),
    Field("goal", "Goal", Kind.DROPDOWN, tuple(g.value for g in Goal)),
    Field("tolerance", "Tolerance", Kind.INPUT),
    Field("notes", "Notes", Kind.TEXTAREA),
)
BY_ID = {f.id: f for f in FIELDS}
BY_LABEL = {f.label: f for f in FIELDS}
# Fields whose `### <label>` section a body from the form always has, with a value.
REQUIRED = ("version", "op", "shapes", "dtypes", "gpu", "goal")
NO_RESPONSE = "_No response_"  # what GitHub renders for an empty field
