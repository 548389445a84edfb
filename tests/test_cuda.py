"""CUDA-only checks, run on a GPU machine (skipped on CPU-only CI): every op on the decode and
prefill shapes of real models, CUDA-graph capture of routed calls, and lean import."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import kforge
from kforge.testing import assert_matches_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@pytest.mark.parametrize("name", sorted(kforge.ops.SPECS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_values_on_gpu(name, dtype):
    spec = kforge.ops.SPECS[name]
    entry = kforge.ops.ENTRIES[name]
    for shape in spec.shapes("smoke", "odd", "edge", "decode", "prefill"):
        for seed in (0, 1):
            args = spec.make_inputs(shape, dtype, "cuda", seed)
            assert_matches_reference(spec, args, entry(*args))


@pytest.mark.parametrize("name", sorted(kforge.ops.SPECS))
def test_cuda_graph_capture_and_replay(name):
    spec = kforge.ops.SPECS[name]
    entry = kforge.ops.ENTRIES[name]
    args = spec.make_inputs(spec.shapes("smoke")[0], torch.bfloat16, "cuda", 0)
    entry(*args)  # decide outside capture
    capture_replay_and_check(spec, entry, args, spec.shapes("smoke")[0])


def capture_replay_and_check(spec, entry, args, shape) -> None:
    """Capture entry(*args) in a CUDA graph (after a warm-up on the capture stream), replay it on
    new values copied into the static inputs, and check the output against the reference. `shape`:
    the problem shape `args` were made for (gemv's or rotary's is not their first tensor's shape)."""
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        entry(*args)
        with torch.cuda.graph(graph, stream=stream):
            out = entry(*args)
    torch.cuda.current_stream().wait_stream(stream)
    fresh = spec.make_inputs(shape, args[spec.tensor_args[0]].dtype, "cuda", 1)
    for static, new in zip(args, fresh):
        if isinstance(static, torch.Tensor):
            static.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    assert_matches_reference(spec, fresh, out)


def test_import_does_not_initialise_cuda():
    code = "import kforge, torch; print(torch.cuda.is_initialized())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("name", sorted(kforge.ops.SPECS))
def test_a_replayed_stored_kernel_is_captured_by_cuda_graphs(name):
    """The Triton backend's cached launcher (replay through the C launcher on the current stream)
    inside a CUDA graph: decided and recorded outside the capture, replayed inside it."""
    import dataclasses

    from helpers import accept_kernel, make_record, write_user_table
    from kforge.backends.triton import impl_id
    from kforge.catalog import seeds
    from kforge.device import fingerprint
    from kforge.router import dispatch
    from kforge.router.key import dtype_signature
    from kforge.store import KernelStore

    spec = kforge.ops.SPECS[name]
    entry = kforge.ops.ENTRIES[name]
    sha = KernelStore().put(seeds(spec)[0].read_text(), op=name, provider="catalog").sha256
    accept_kernel(sha, name)
    domain = KernelStore().load(sha, spec).domain
    args = spec.make_inputs(spec.shapes("smoke")[0], torch.bfloat16, "cuda", 0)
    record = make_record(name, spec.problem(args), impl=impl_id(sha), dtypes=dtype_signature(args, spec.tensor_args),
                         p50=0.1, domain=domain, device=str(fingerprint("cuda")))
    write_user_table(dataclasses.replace(record, source_sha256=sha, provider="catalog", timing="cuda_events"))
    dispatch.reset()
    entry(*args)  # forward as written (Triton compiles, an autotuner may synchronise to time)
    torch.cuda.set_sync_debug_mode("error")  # a user hunting syncs: the recording's own compare is not one
    try:
        for _ in range(2):
            entry(*args)  # recorded forward, replay: all outside the capture
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert not dispatch.ROUTER.disabled, dispatch.ROUTER.disabled
    (decision,) = dispatch.ROUTER.ops[name].decisions.values()
    assert decision.impl == impl_id(sha)
    assert decision.fn.launch_state.mode == "replay", decision.fn.launch_state.reason
    capture_replay_and_check(spec, entry, args, spec.shapes("smoke")[0])
