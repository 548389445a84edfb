"""kforge's torch.compile backend: `torch.compile(model, backend="kforge")`.

Dynamo's graph is rewritten before Inductor sees it (by Inductor's post-grad stage layer_norm,
softmax and RMSNorm are already split into primitives): the natural PyTorch spellings of kforge's
ops (`compile.patterns`) become `kforge::<op>` calls, routed at compile time where shapes are
static (`compile.routing`), and the rest of the graph goes to Inductor. `kforge.explain` shows
what was rewritten, where, and why other candidates were not.
"""
from __future__ import annotations

from kforge.compile.backend import Options, kforge_backend
from kforge.compile.explain import Explanation, explain

__all__ = ["Options", "kforge_backend", "explain", "Explanation"]
