"""What verification returns (`Verdict`), which rule failed (`Check`) in which trial (`Trial`), and
the exceptions the verifier raises inside itself to stop at the first failure."""
from __future__ import annotations

import dataclasses
import enum

from kforge.evaluate.cases import Case
from kforge.records import Evidence

STRESS_CALLS = 64  # more than any ring of output buffers that an aliasing window of 12 missed (16)


class Check(str, enum.Enum):
    RAISED = "raised"
    OUTPUT = "output"  # wrong number, type, shape, dtype or device of outputs
    OUTPUT_TYPE = "output-type"  # an output that is a torch.Tensor subclass (or a tuple/list subclass)
    ALIASES_INPUT = "aliases-input"
    ALIASES_REFERENCE = "aliases-reference"
    ALIASES_OUTPUT = "aliases-output"  # two outputs of one call share storage
    STALE_OUTPUT = "stale-output"  # returned the storage of an earlier call's output
    MODIFIED_INPUT = "modified-input"
    UNWRITTEN = "unwritten"  # output elements that hold (or follow) the poison of fresh memory
    NONFINITE = "nonfinite"  # NaN/Inf where the reference is finite
    NAN_PROPAGATION = "nan-propagation"  # finite where the reference is NaN
    ERROR_BUDGET = "error-budget"
    NONDETERMINISTIC = "nondeterministic"
    REPLAY = "replay"  # wrong, and bit for bit what an earlier call returned there
    DOMAIN = "domain"  # its DOMAIN excludes every case


class Trial(str, enum.Enum):
    FIRST = "first call"
    REPEAT = "repeated on copies of the inputs at new addresses"
    REUSED_BUFFERS = "same input buffers, new content"
    NEW_BUFFERS = "new input buffers, content almost the same"
    STRESS = f"called {STRESS_CALLS} times on the same inputs, every output kept"


@dataclasses.dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str  # "" when accepted; else the failing case, trial and what went wrong
    check: Check | None = None
    case: Case | None = None
    trial: Trial | None = None
    max_error_ratio: float = 0.0  # worst error / budget over every output checked
    evidence: Evidence | None = None  # what was verified (None when rejected)
    cases: int = 0  # cases run
    skipped: tuple[str, ...] = ()  # cases outside the domain, with the domain's reason
    error_types: tuple[str, ...] = ()  # RAISED: the exception's qualified type and its causes'


class Failure(Exception):
    def __init__(self, check: Check, trial: Trial, message: str, error_types: tuple[str, ...] = ()):
        super().__init__(message)
        self.check = check
        self.trial = trial
        self.message = message
        self.error_types = error_types  # RAISED: what the candidate raised (sandbox_worker.exception_types)


class Skip(Exception):
    """A case that is no valid call after all (a variant outside the dtype's range)."""
