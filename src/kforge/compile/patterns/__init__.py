"""The natural PyTorch spellings of kforge's ops, as matchers over a Dynamo FX graph.

A `Pattern` is anchored on one canonical operation (`kforge.compile.graph.canon`): for every node
of that kind its `match` returns a `Match` (what the kforge op's arguments are and which graph
nodes its outputs stand for) or a `Reject` with the reason the code there is not exactly the op
(`kforge.explain` shows both). Patterns run in the order of `PATTERNS`: larger ones first, so the
MoE router's softmax is claimed by topk_softmax before the plain softmax pattern sees it.

A new op's pattern goes in the module of its family (or a new module imported below, in its place
in that order); its types come from `patterns.base`.
"""
from __future__ import annotations

from kforge.compile.patterns import activations, loss, moe, norms, rotary
from kforge.compile.patterns.base import Match, Pattern, Reject

# Larger patterns first: moe claims the router's softmax before activations' softmax sees it.
PATTERNS: tuple[Pattern, ...] = (*moe.PATTERNS, *norms.PATTERNS, *loss.PATTERNS, *activations.PATTERNS,
                                 *rotary.PATTERNS)

# The ops no pattern rewrites to, each with the reason; tests/test_compile_patterns.py holds every
# registered built-in op to a pattern or a line here.
UNMATCHED: dict[str, str] = {
    "gemv": "F.linear / x @ w.T stays Inductor's: on the H200 kforge served every measured gemv shape with "
            "the vendor's cuBLAS (benchmarks/RESULTS.md), which Inductor calls for a linear layer too, so a "
            "rewrite of every linear layer would add a routed call and win nothing",
    "fused_moe": "no pattern yet: Hugging Face's experts are a loop with data-dependent shapes "
                 "(experts_implementation='eager', where Dynamo breaks the graph) or, transformers 5.2x's "
                 "default, a sort/histc/grouped_mm sequence whose spelling changes between releases; "
                 "kforge.patch swaps the experts module for the op in eager models instead",
}

__all__ = ["PATTERNS", "UNMATCHED", "Match", "Pattern", "Reject"]
