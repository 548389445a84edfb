"""cross_entropy(x, target, ignore_index=-100) -> loss: the per-token loss of a language model's
head, loss[r] = logsumexp(x[r]) - x[r, target[r]], as F.cross_entropy(reduction="none").

x: (..., vocab) logits in bf16/fp16/fp32/fp64, vocab >= 1; the vocabulary is the last dim, as an
LM head writes it (F.cross_entropy's own layout for more than 2 dims puts classes in dim 1: the
vendor call flattens to (rows, vocab) first). target: x.shape[:-1] class indices, int64 or
int32. loss: x.shape[:-1] in x's dtype (F.cross_entropy's output dtype), computed in fp32 (fp64 for
fp64 input) and rounded once; 0 where target == ignore_index (padding, prompt tokens).

A target outside [0, vocab) that is not ignore_index is refused (`KforgeInputError`) on a CPU,
where `check_values` reads the targets on every call. On a GPU they are not read: that costs a
device sync per call and cannot run while a CUDA graph is captured; there the vendor
device-asserts, the reference and kforge's kernels give that row a NaN loss and never read outside x. A +inf logit makes its
row NaN (as log_softmax does: inf - inf), a -inf target logit makes it +inf.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kforge.errors import KforgeInputError
from kforge.specs import checks
from kforge.specs.spec import FLOAT_DTYPES, Magnitude, OpSpec, generator, prod, resolution_floor

NAME = "cross_entropy"
DTYPES = FLOAT_DTYPES + (torch.float64,)
TARGET_DTYPES = (torch.int64, torch.int32)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference(x: torch.Tensor, target: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    vocab = x.shape[-1]
    xf = x.to(accumulate_dtype(x.dtype))  # (..., vocab)
    t = target.long()  # (...)
    # The row maximum is a constant of the logsumexp, so it carries no gradient.
    m = xf.detach().amax(-1, keepdim=True)  # (..., 1)
    lse = (m + (xf - m).exp().sum(-1, keepdim=True).log()).squeeze(-1)
    picked = xf.gather(-1, t.clamp(0, vocab - 1).unsqueeze(-1)).squeeze(-1)  # never out of bounds
    loss = torch.where((t >= 0) & (t < vocab), lse - picked, float("nan"))
    return torch.where(t == ignore_index, 0.0, loss).to(x.dtype)


def vendor(x: torch.Tensor, target: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    # log_softmax computes in fp32 for bf16/fp16 and rounds the log-probabilities once, to x's
    # dtype: the loss is that rounding, negated (within the budget on every CPU shape and dtype,
    # tests/test_op_cross_entropy.py). nll_loss takes int64 targets only.
    vocab = x.shape[-1]
    loss = F.cross_entropy(x.reshape(-1, vocab), target.reshape(-1).long(), ignore_index=ignore_index,
                           reduction="none")
    return loss.view(target.shape)


def fake(x: torch.Tensor, target: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    return x.new_empty(x.shape[:-1])


def make_inputs(shape, dtype, device, seed):
    """Logits x of `shape` (..., vocab) as a trained LM head gives them: N(0, 2^2), the target's
    own logit raised by log(vocab), so the loss sits around log(1 + e^2) ~ 2 at every vocab (the
    subtraction cancels, as in training); targets uniform in [0, vocab), one row in twenty
    (rounded up, none of a single row) set to ignore_index -100 as padding is."""
    *lead, vocab = shape
    rows = prod(lead)
    gen = generator(seed, device)
    on = gen.device
    x = torch.randn((rows, vocab), generator=gen, device=on, dtype=torch.float32) * 2.0
    target = torch.randint(0, max(vocab, 1), (rows,), generator=gen, device=on)
    if rows and vocab:
        x[torch.arange(rows, device=on), target] += math.log(vocab)
    if rows > 1:
        target[torch.randperm(rows, generator=gen, device=on)[:math.ceil(rows / 20)]] = -100
    return (x.view(shape).to(device=device, dtype=dtype), target.view(lead).to(device), -100)


def vary(args, values):
    """The scalar variants in force: a new ignore_index also marks the padding rows make_inputs
    set to -100, so those rows stay ignored (a target outside the vocabulary is a caller's error)."""
    x, target, ignore_index = args
    new = values.get("ignore_index", ignore_index)
    if new != ignore_index:
        target = torch.where(target == ignore_index, torch.full_like(target, new), target)
    return (x, target, new)


def check(args) -> None:
    x, target, ignore_index = args
    checks.floating_tensor(NAME, "x", x, DTYPES)
    checks.min_rank(NAME, "x", x, 1)
    if x.shape[-1] == 0:
        raise KforgeInputError(NAME, "x", f"must have a vocabulary (last dim) of at least 1, got shape {tuple(x.shape)}")
    if not isinstance(target, torch.Tensor):
        raise KforgeInputError(NAME, "target", f"must be a torch.Tensor, got {type(target).__name__}")
    if target.dtype not in TARGET_DTYPES:
        raise KforgeInputError(NAME, "target", f"has dtype {target.dtype}; kforge.{NAME} takes class indices "
                                               "as int64 or int32")
    checks.same_device(NAME, "x", x, "target", target)
    if target.shape != x.shape[:-1]:
        raise KforgeInputError(NAME, "target", f"must have shape {tuple(x.shape[:-1])} (x's shape without its "
                                               f"vocab dim), got {tuple(target.shape)}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, torch.SymInt)):
        raise KforgeInputError(NAME, "ignore_index", f"must be an int, got {type(ignore_index).__name__}")


def check_values(args) -> None:
    x, target, ignore_index = args
    checks.in_range(NAME, "target", target, x.shape[-1], "the vocab, the last dim of 'x'", ignore=ignore_index)


def problem(args):
    x = args[0]
    return (prod(x.shape[:-1]), x.shape[-1])  # (rows, vocab)


def tolerance(dtype, problem):
    # A logsumexp over vocab less one logit: an absolute error of a few units at the logsumexp's
    # magnitude, ~log(vocab) (plus the logit spread); the loss is of the same order.
    # For fp32/fp64 the loss also carries the roundings of exp, the sum, log and the subtraction,
    # which no output rounding hides: 4 units (fp64 at 1x3 erred 3.85e-16 against a 1-unit 3.7e-16).
    vocab = max(problem[1], 1)
    roundings = 4.0 if dtype in (torch.float32, torch.float64) else 1.0
    return resolution_floor(dtype, vocab, scale=roundings * max(1.0, math.log(vocab)))


def bytes_moved(problem, dtype) -> int:
    """x read once, an int64 target read and a loss written per row."""
    rows, vocab = problem
    size = torch.finfo(dtype).bits // 8
    return rows * vocab * size + rows * (8 + size)


SPEC = OpSpec(
    name=NAME,
    schema="cross_entropy(Tensor x, Tensor target, int ignore_index=-100) -> Tensor",
    description="per-row cross-entropy loss over the last dim: logsumexp(x) - x[target], 0 at ignore_index",
    reference=reference,
    vendor=vendor,
    fake=fake,
    make_inputs=make_inputs,
    check=check,
    check_values=check_values,
    problem=problem,
    problem_dims=("rows", "vocab"),
    # As softmax's cols: kernels pick their blocks and splits from the row length.
    exact_dims=("vocab",),
    dtypes=DTYPES,
    tolerance=tolerance,
    bytes_moved=bytes_moved,
    # Per logit: max, subtract, exp, add.
    flops=lambda problem, dtype: 4 * problem[0] * problem[1],
    shape_sets={
        "smoke": ((4, 64), (2, 3, 128)),
        "odd": ((3, 1000), (5, 4097), (1, 17), (7, 151), (2, 3, 65)),
        "edge": ((0, 64), (1, 1), (1, 8), (64, 1), (2, 0, 16)),
        # Vocabularies: Llama 2 / Mistral 32000, Llama 3 128256, Qwen 2.5 151936 (7B) and 152064
        # (72B), DeepSeek V3 129280; one token per sequence of an eval or decode batch.
        "decode": ((1, 32000), (8, 128256), (32, 151936), (64, 152064), (16, 129280)),
        # Training batch x sequence, under ~2.5 GB of fp32 logits (twice that in fp64).
        "prefill": ((16384, 32000), (4096, 128256), (4096, 151936), (2048, 152064), (4096, 129280)),
    },
    # Losses near log(vocab) from nearly flat logits, and logits of N(0, 64^2), losses of hundreds
    # (their floor follows them).
    magnitudes=(Magnitude(2.0 ** -10, ("x",)), Magnitude(2.0 ** 5, ("x",), output=2.0 ** 5)),
    # 0 is a real class index: a kernel that hard-codes -100 loses or keeps the wrong rows.
    scalar_variants={"ignore_index": (0,)},
    vary=vary,
    seed_kernels=("cross_entropy_online.py", "cross_entropy_split.py"),
)
