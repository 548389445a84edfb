"""`torch.compile(model, backend="kforge")`: rewrite the graph to kforge ops, compile the rest.

Registered under the name "kforge" through the `torch_dynamo_backends` entry point in
pyproject.toml, and only there: Dynamo loads it on first lookup, and a second registration of the
name raises. Options, as a dict (`torch.compile(..., options={...})`) or an `Options`:

    ops        which kforge ops to rewrite to (default: all); e.g. {"rms_norm", "topk_softmax"}
    compiler   what compiles the rewritten graph: "inductor" (default), "aot_eager" or "eager"
    on_miss    a match the score table has no record for: "inductor" leaves it to Inductor (the
               default when compiling with Inductor: never slower than plain Inductor), "kforge"
               calls the op's vendor implementation through kforge (default for other compilers)
    route      "auto" (default): static shapes bake the table's choice in, dynamic ones route
               per call; "runtime": always route per call
    inductor   Inductor config patches, e.g. {"max_autotune": True}
    mode       Inductor's mode ("reduce-overhead" for CUDA graphs, "max-autotune", ...): torch.compile
               refuses `mode=` and `options=` together, so with options the mode goes here
    report     a callable given each graph's `Report`

`torch.compile(..., mode=...)` without options works too.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Any, Callable

import torch

from kforge.errors import UnknownNameError

log = logging.getLogger("kforge.compile")

COMPILERS = ("inductor", "aot_eager", "eager")
ON_MISS = ("inductor", "kforge")
ROUTES = ("auto", "runtime")
_graph_numbers = itertools.count()


@dataclasses.dataclass(frozen=True)
class Options:
    ops: frozenset[str] | None = None
    compiler: str = "inductor"
    on_miss: str = ""  # "" -> "inductor" with Inductor, "kforge" otherwise
    route: str = "auto"
    inductor: tuple[tuple[str, Any], ...] = ()
    mode: str | None = None
    report: Callable[[Any], None] | None = None
    log_misses: bool = True  # kforge.explain plans without logging

    def __post_init__(self):
        from kforge import ops

        if self.compiler not in COMPILERS:
            raise UnknownNameError("compiler in the kforge backend's options", self.compiler, COMPILERS)
        if self.on_miss == "":
            object.__setattr__(self, "on_miss", "inductor" if self.compiler == "inductor" else "kforge")
        if self.on_miss not in ON_MISS:
            raise UnknownNameError("on_miss in the kforge backend's options", self.on_miss, ON_MISS)
        if self.route not in ROUTES:
            raise UnknownNameError("route in the kforge backend's options", self.route, ROUTES)
        if self.ops is not None:
            for name in self.ops:
                if name not in ops.SPECS:
                    raise UnknownNameError("op in the kforge backend's options['ops']", name, ops.SPECS)
            object.__setattr__(self, "ops", frozenset(self.ops))
        if self.mode not in (None, "default") and self.compiler != "inductor":
            raise ValueError(f"kforge backend: mode={self.mode!r} needs compiler='inductor', not {self.compiler!r}")
        if self.inductor and self.compiler != "inductor":
            raise ValueError(f"kforge backend: options['inductor'] needs compiler='inductor', not {self.compiler!r}")

    @classmethod
    def parse(cls, options: "Options | dict | None") -> "Options":
        if options is None:
            return cls()
        if isinstance(options, Options):
            return options
        if not isinstance(options, dict):
            raise TypeError(f"kforge backend: options must be a dict or kforge.compile.Options, not {type(options).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        for name in options:
            if name not in fields:
                raise UnknownNameError("option of the kforge backend", name, sorted(fields))
        kwargs = dict(options)
        if "inductor" in kwargs:
            kwargs["inductor"] = tuple(sorted(dict(kwargs["inductor"]).items()))
        if kwargs.get("ops") is not None:
            kwargs["ops"] = frozenset([kwargs["ops"]] if isinstance(kwargs["ops"], str) else kwargs["ops"])
        return cls(**kwargs)


def kforge_backend(gm: torch.fx.GraphModule, example_inputs: list, *, mode: str | None = None,
                   options: "Options | dict | None" = None):
    """The Dynamo backend: rewrites `gm` in place, then compiles it with `options.compiler`."""
    from kforge.compile.rewrite import rewrite

    opts = Options.parse(options)
    if mode not in (None, "default") and opts.mode not in (None, "default", mode):
        raise ValueError(f"kforge backend: mode={mode!r} and options['mode']={opts.mode!r} disagree")
    mode = mode if mode not in (None, "default") else opts.mode
    if mode not in (None, "default") and opts.compiler != "inductor":
        raise ValueError(f"kforge backend: mode={mode!r} needs compiler='inductor', not {opts.compiler!r}")
    patches = {}
    if opts.compiler == "inductor":
        from torch._inductor import list_mode_options

        patches = dict(list_mode_options(mode)) if mode not in (None, "default") else {}
        patches.update(dict(opts.inductor))
    report = rewrite(gm, opts, next(_graph_numbers), cudagraphs=bool(patches.get("triton.cudagraphs")))
    for e in report.entries:
        log.info("kforge.compile: %s %s at %s: %s", "rewrote" if e.rewritten else "left", e.op, e.where, e.reason)
    if opts.report is not None:
        opts.report(report)
    if opts.compiler == "eager":
        return gm.forward
    if opts.compiler == "aot_eager":
        from torch._dynamo.backends.debugging import aot_eager

        return aot_eager(gm, example_inputs)
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(gm, example_inputs, config_patches=patches)
