"""The static check as the offline side names it: `kforge.evaluate.static.check_source`.

It lives in `kforge.checks.static` (with its allow-lists in `kforge.checks.names`), below the
evaluator, because the router runs it too: on a stored kernel before importing it."""
from __future__ import annotations

from kforge.checks.names import ALLOWED_IMPORTS, TENSOR_METHODS, TORCH_ALLOWED, TRITON_ALLOWED
from kforge.checks.rules import Finding, Rule
from kforge.checks.static import check_source, check_stored

__all__ = ["ALLOWED_IMPORTS", "TENSOR_METHODS", "TORCH_ALLOWED", "TRITON_ALLOWED", "Finding", "Rule", "check_source",
           "check_stored"]
