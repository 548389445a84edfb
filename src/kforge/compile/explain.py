"""`kforge.explain(model, *example_inputs)`: what the kforge backend rewrites in a model, where,
how each rewrite is routed, and why the other candidate patterns were left alone."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from kforge.compile.rewrite import Report
from kforge.router import misses


@dataclasses.dataclass
class Explanation:
    reports: list[Report]  # one per graph Dynamo produced (graph breaks make several)

    @property
    def entries(self):
        return [e for r in self.reports for e in r.entries]

    @property
    def rewritten(self):
        return [e for e in self.entries if e.rewritten]

    @property
    def left(self):
        return [e for e in self.entries if not e.rewritten]

    def to_dict(self) -> dict[str, Any]:
        return {"graphs": len(self.reports), "rewritten": len(self.rewritten), "left": len(self.left),
                "entries": [dict(e.to_dict(), graph=i) for i, r in enumerate(self.reports) for e in r.entries]}

    def __str__(self) -> str:
        lines = [f"kforge.explain: {len(self.reports)} graph(s), {len(self.rewritten)} rewritten, "
                 f"{len(self.left)} candidate(s) left alone"]
        for e in self.rewritten:
            how = f"{e.impl} (compile time)" if e.route == "baked" else "routed per call"
            lines.append(f"  rewritten  {e.op:<20} {e.where}")
            lines.append(f"             -> {how}: {e.reason}" + (f"; {e.note}" if e.note else ""))
        for e in self.left:
            lines.append(f"  left       {e.pattern:<20} {e.where}")
            lines.append(f"             {e.reason}")
        return "\n".join(lines)


def explain(model, *example_inputs, dynamic: bool | None = None, mode: str | None = None,
            options: dict | None = None, **kwargs) -> Explanation:
    """Run `model(*example_inputs, **kwargs)` once through the kforge backend without compiling
    anything (the rewritten graph runs eagerly) and return what it did. Like torch._dynamo.explain,
    it resets Dynamo: models compiled before recompile on their next call. `options` as for the
    backend, except `compiler` and `report`; `mode` as for torch.compile ("reduce-overhead" ranks
    implementations by device time alone). Routing decisions are those the table gives for the
    compiler the backend would use by default (Inductor)."""
    from kforge.compile.backend import Options
    from kforge.compile.rewrite import rewrite

    opts = dict(options or {})
    for reserved in ("compiler", "report", "log_misses"):
        if reserved in opts:
            raise ValueError(f"kforge.explain: options[{reserved!r}] is set by explain itself")
    plan_opts = Options.parse({**opts, "log_misses": False})  # routed as a compile with Inductor would route
    mode = mode or plan_opts.mode
    cudagraphs = mode == "reduce-overhead" or bool(dict(plan_opts.inductor).get("triton.cudagraphs"))
    reports: list[Report] = []

    def backend(gm, example_inputs):
        reports.append(rewrite(gm, plan_opts, len(reports), cudagraphs=cudagraphs))
        return gm.forward

    # As torch._dynamo.explain does: reset Dynamo before and after, or each explain would add a
    # cache entry to the model's code (another backend), and after Dynamo's recompile limit the
    # model, the user's own torch.compile of it included, would run eagerly.
    torch._dynamo.reset()
    try:
        with misses.uncounted():  # explaining a model is not serving it: its routed calls are not logged
            torch.compile(model, backend=backend, dynamic=dynamic)(*example_inputs, **kwargs)
    finally:
        torch._dynamo.reset()
    return Explanation(reports)
