"""`kforge.graphed(fn, *example_inputs)`: a decode step built from kforge ops captured into one CUDA
graph, so its replays pay no host cost per op (no Python, no routing, no launches).

What it checks, so a graph never silently serves a call it was not built for:
  - at capture: every tensor input is on one CUDA device; `fn` is warmed up first on a side
    stream (routing decisions made, Triton kernels loaded, Inductor builds compiled: nothing
    compiles while capturing); one replay on the example inputs is compared with an eager call of
    `fn` on them (`check`, exact for the same kernels, torch.testing's bf16/fp32 tolerances
    otherwise), and a mismatch refuses the graph;
  - per call: the same number of arguments, each tensor with the captured shape, dtype, device
    and strides, each other argument equal to the captured one (it was baked into the graph); a
    mismatch raises KforgeInputError naming the argument, before anything is copied.
A call copies its tensors into the graph's static inputs, replays, and returns the static outputs:
the next replay overwrites them (clone what must be kept). The routing choice is the one made at
capture: a table changed later is not seen by the graph (capture again). Replays are not counted
in `kforge.stats()` (no Python runs), the capture's calls are.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from kforge.errors import KforgeError, KforgeInputError

NAME = "graphed"
# A Triton decision's second call records its launches and verifies the replay (a synchronizing
# compare, `backends.launcher`); from the third on it replays. Capture only ever sees the replay.
MIN_WARMUP = 3


class GraphCaptureError(KforgeError, RuntimeError):
    """`fn` could not be captured, or its replay disagreed with an eager call."""


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


def graphed(fn: Callable, *example_inputs, warmup: int = 3, check: bool = True) -> Callable:
    """`fn` captured into a CUDA graph on `example_inputs`; see the module docstring."""
    if not callable(fn):
        raise KforgeInputError(NAME, "fn", f"must be callable, got {type(fn).__name__}")
    tensors = [x for x in example_inputs if isinstance(x, torch.Tensor)]
    if not tensors:
        raise KforgeInputError(NAME, "example_inputs", "must hold at least one tensor")
    devices = {x.device for x in tensors}
    if len(devices) != 1 or next(iter(devices)).type != "cuda":
        raise KforgeInputError(NAME, "example_inputs", f"must all be on one CUDA device, got {sorted(map(str, devices))}"
                               + ("" if torch.cuda.is_available() else " (this machine has no CUDA GPU)"))
    device = next(iter(devices))
    static = tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in example_inputs)
    from kforge.router.dispatch import ROUTER

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(max(MIN_WARMUP, warmup)):
            fn(*static)
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    saved, ROUTER.next_check = ROUTER.next_check, float("inf")  # no table re-read (and re-decision) mid-capture
    try:
        with torch.cuda.graph(graph):
            out = fn(*static)
    except Exception as exc:
        raise GraphCaptureError(f"kforge.graphed: {getattr(fn, '__name__', 'fn')} could not be captured into a "
                                f"CUDA graph: {type(exc).__name__}: {exc}") from exc
    finally:
        ROUTER.next_check = saved
    replay = _Replay(graph, static, out)
    if check:
        got = replay(*example_inputs)
        want = fn(*example_inputs)
        for i, (a, b) in enumerate(zip(_tensors(got), _tensors(want), strict=True)):
            try:
                torch.testing.assert_close(a, b, rtol=None, atol=None, equal_nan=True)
            except AssertionError as exc:
                raise GraphCaptureError(f"kforge.graphed: output {i} of the replay differs from an eager call "
                                        f"on the example inputs: {exc}") from None
    return replay


class _Replay:
    """The callable `graphed` returns: checks a call's arguments, copies them in, replays."""

    def __init__(self, graph: torch.cuda.CUDAGraph, static: tuple, out: Any):
        self.graph, self.static, self.out = graph, static, out
        self.layout = [(x.shape, x.dtype, x.device, x.stride()) if isinstance(x, torch.Tensor) else None
                       for x in static]

    def __call__(self, *args):
        if len(args) != len(self.static):
            raise KforgeInputError(NAME, "args", f"takes the {len(self.static)} arguments it was captured with, "
                                   f"got {len(args)}")
        for i, (x, was, layout) in enumerate(zip(args, self.static, self.layout)):
            if layout is None:
                if isinstance(x, torch.Tensor) or type(x) is not type(was) or x != was:
                    raise KforgeInputError(NAME, f"args[{i}]", f"was captured as {was!r} (baked into the graph), "
                                           f"got {x!r}: capture another graph for it")
            elif not isinstance(x, torch.Tensor) or (x.shape, x.dtype, x.device, x.stride()) != layout:
                got = (f"shape {tuple(x.shape)}, {x.dtype}, {x.device}, strides {x.stride()}"
                       if isinstance(x, torch.Tensor) else type(x).__name__)
                raise KforgeInputError(NAME, f"args[{i}]", f"must have the captured shape {tuple(layout[0])}, "
                                       f"{layout[1]}, {layout[2]}, strides {layout[3]}; got {got}")
        for x, static in zip(args, self.static):
            if isinstance(x, torch.Tensor) and x is not static:
                static.copy_(x)
        self.graph.replay()
        return self.out
