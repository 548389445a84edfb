"""What `correctness.verify` runs: cases (shape, dtype, seed, layout, variant) and their inputs.

A case's inputs are `spec.make_inputs(shape, dtype, device, seed)`, then, as the case says: a NaN
row and a zero row (special), tensor arguments scaled or scalar arguments replaced (a `Variant`:
the spec's `Magnitude`s and `scalar_variants`), and every tensor copied into a layout whose gaps
hold NaN. Shapes: the op's sets, a long row (fp16 accumulation), many short rows (per-tile
statistics), and secret shapes near the public ones.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
import random
from typing import Any, Sequence

import torch

from kforge.specs import Magnitude, OpSpec
from kforge.specs.spec import generator

Shape = tuple[int, ...]

CPU_SETS = ("smoke", "odd", "edge")
GPU_SETS = CPU_SETS + ("decode", "prefill")
LONG_ROW: Shape = (2, 16384)  # long enough that fp16 accumulation visibly leaves the budget
# Rows well past any tile of 8 or 16 rows (with a partial last tile), short enough for the interpreter.
MANY_ROWS = 67
ROW_DIMS = ("rows", "tokens", "m")  # first problem dims that count rows: the many-rows case applies
SECRET_SHAPES = 2
SECRET_SEEDS = 1  # per shape, beside the public seeds
PERTURB_EVERY = 64  # the near-identical replay input changes one element in this many (at least one)


class Layout(str, enum.Enum):
    CONTIGUOUS = "contiguous"
    SLICED_ROWS = "sliced-rows"  # tensors of rank >= 2 are [..., :n] of rows 3 wider
    STRIDED_COLS = "strided-cols"  # every tensor is [..., ::2] of a buffer twice as wide
    OFFSET = "offset"  # contiguous, starting one element into its storage (misaligned)
    # Tensors of rank >= 3 are [..., :b, :n] of a (..., b + 2, n + 3) buffer: rows are evenly spaced
    # within a block of b and jump two rows further between blocks, so no single row stride exists.
    UNEVEN_ROWS = "uneven-rows"


@dataclasses.dataclass(frozen=True)
class Variant:
    """How a case's inputs differ from what make_inputs draws: tensor arguments scaled by a
    magnitude, or scalar arguments replaced (name, value)."""

    magnitude: Magnitude | None = None
    scalars: tuple[tuple[str, Any], ...] = ()

    @property
    def output_scale(self) -> float:
        return self.magnitude.output if self.magnitude is not None else 1.0

    def __str__(self) -> str:
        parts = [f"{', '.join(self.magnitude.args)} x 2^{math.log2(self.magnitude.factor):g}"] if self.magnitude else []
        return ", ".join(parts + [f"{name}={value!r}" for name, value in self.scalars])


def variants(spec: OpSpec) -> list[Variant]:
    """The spec's magnitudes, then each scalar variant alone."""
    out = [Variant(magnitude=m) for m in spec.input_magnitudes()]
    out += [Variant(scalars=((name, value),)) for name, values in spec.scalar_variants.items() for value in values]
    return out


@dataclasses.dataclass(frozen=True)
class Case:
    shape: Shape  # of the primary input, as spec.make_inputs takes it
    dtype: torch.dtype
    seed: int
    layout: Layout = Layout.CONTIGUOUS
    special: bool = False  # one row holds a NaN, another is all zeros
    secret: bool = False  # shape or seed derived from the caller's secret
    variant: Variant | None = None  # another magnitude or scalar value; assigned as the cases run

    def __str__(self) -> str:
        extra = "".join([f", {self.layout.value}" if self.layout != Layout.CONTIGUOUS else "",
                         ", NaN row + zero row" if self.special else "", ", secret" if self.secret else "",
                         f", {self.variant}" if self.variant is not None else ""])
        return f"shape {self.shape} {str(self.dtype).removeprefix('torch.')} seed {self.seed}{extra}"


def derive(secret: int, *labels) -> int:
    digest = hashlib.sha256(repr((secret,) + labels).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def secret_shapes(public: Sequence[Shape], secret: int, count: int) -> list[Shape]:
    """Shapes near the public ones, never among them and never a power of two wide: the first
    from the widest public shape (a table of widths, or a block sized for the widths shown,
    fails it), the others from random public shapes."""
    bases = sorted((s for s in public if s and all(d > 0 for d in s)), key=lambda s: (s[-1], s))
    rng = random.Random(derive(secret, "shapes"))
    out: list[Shape] = []
    for i in range(count if bases else 0):
        base = bases[-1] if i == 0 else rng.choice(bases)
        for _ in range(100):
            n = base[-1] + rng.randint(1, max(8, base[-1] // 8))
            lead = tuple(rng.randint(1, max(1, min(d, 6))) for d in base[:-1])
            shape = lead + (n,)
            if n & (n - 1) and shape not in public and shape not in out:
                out.append(shape)
                break
    return out


def secret_shapes_of(spec: OpSpec, public: Sequence[Shape], secret: int, count: int) -> list[Shape]:
    """The secret shapes for `spec`: none when its shapes are fixed, the op's own rule when it has
    one (`OpSpec.secret_shapes`: a KernelBench file varies only the sizes its globals define),
    else `secret_shapes`."""
    if spec.fixed_shapes or count <= 0:
        return []
    own = getattr(spec, "secret_shapes", None)
    if own is not None:
        return [tuple(s) for s in own(public, random.Random(derive(secret, "shapes")), count)]
    return secret_shapes(public, secret, count)


def many_rows_shape(public: Sequence[Shape]) -> Shape | None:
    """The first public shape with no zero dim, its leading dim MANY_ROWS."""
    base = next((s for s in public if len(s) >= 2 and all(d > 0 for d in s)), None)
    return None if base is None else (MANY_ROWS,) + tuple(base[1:])


def build(spec: OpSpec, device, dtypes, shape_sets, shapes, seeds, secret, layouts, long_row, many_rows, count,
          timed=()):
    """Cases grouped per (dtype, shape); each group's first case carries the replay trials."""
    if shapes is not None:
        public = [tuple(s) for s in shapes]
    else:
        sets = shape_sets or (GPU_SETS if device.type == "cuda" else CPU_SETS)
        public = list(spec.shapes(*[s for s in sets if s in spec.shape_sets]))
    rows_op = spec.problem_dims[:1] in (("rows",), ("tokens",), ("m",))
    if long_row is None:
        long_row = shapes is None and spec.problem_dims[:1] == ("rows",)
    if long_row and LONG_ROW not in public:
        public.append(LONG_ROW)
    if many_rows is None:
        many_rows = shapes is None and rows_op and not spec.fixed_shapes
    extra = many_rows_shape(public) if many_rows else None
    if extra is not None and extra not in public:
        public.append(extra)
    public += [s for s in dict.fromkeys(timed) if s not in public]  # each record verified at its own key
    hidden = secret_shapes_of(spec, public, secret, count)
    secret_seeds = [derive(secret, "seed", i) for i in range(SECRET_SEEDS)]
    groups = []
    for dtype in (tuple(dtypes) if dtypes is not None else spec.dtypes):
        for shape in public + hidden:
            is_secret = shape in hidden
            group = [Case(shape, dtype, s, secret=is_secret) for s in ([] if is_secret else list(seeds))]
            group += [Case(shape, dtype, s, secret=True) for s in secret_seeds]
            if math.prod(shape) > 0:
                group.append(Case(shape, dtype, derive(secret, "special", shape), special=True, secret=True))
                group += [Case(shape, dtype, derive(secret, "layout", shape, layout.value), layout=layout, secret=True)
                          for layout in layouts if layout != Layout.CONTIGUOUS]
            groups.append(group)
    return groups


# -- input construction -----------------------------------------------------------------------------
def make_inputs(spec: OpSpec, case: Case, device, seed: int | None = None) -> tuple:
    """The case's inputs, contiguous (before its layout): make_inputs, then the special rows, then
    its variant. seed: another seed for the same case (the replay trials' new content)."""
    args = spec.make_inputs(case.shape, case.dtype, device, case.seed if seed is None else seed)
    if case.special:
        inject_special(args, spec.tensor_args[0], case.seed)
    variant = case.variant
    if variant is not None and variant.magnitude is not None:
        scaled = {spec.arg_names.index(name) for name in variant.magnitude.args}
        args = tuple(a * variant.magnitude.factor if i in scaled and isinstance(a, torch.Tensor)
                     and a.is_floating_point() else a for i, a in enumerate(args))
    if variant is not None and variant.scalars:
        args = spec.with_scalars(args, dict(variant.scalars))
    return tuple(args)


def relayout(t: torch.Tensor, layout: Layout) -> torch.Tensor:
    """A copy of `t` in `layout`, the gaps of its storage filled with NaN (or the max integer);
    `t` itself where the layout does not apply to it (rank, no elements)."""
    if layout == Layout.CONTIGUOUS or t.numel() == 0:
        return t
    fill = float("nan") if t.is_floating_point() else torch.iinfo(t.dtype).max
    if layout == Layout.SLICED_ROWS:
        if t.dim() < 2:
            return t
        buf = torch.full((*t.shape[:-1], t.shape[-1] + 3), fill, dtype=t.dtype, device=t.device)
        view = buf[..., : t.shape[-1]]
    elif layout == Layout.STRIDED_COLS:
        buf = torch.full((*t.shape[:-1], 2 * t.shape[-1]), fill, dtype=t.dtype, device=t.device)
        view = buf[..., ::2]
    elif layout == Layout.UNEVEN_ROWS:
        if t.dim() < 3:
            return t
        buf = torch.full((*t.shape[:-2], t.shape[-2] + 2, t.shape[-1] + 3), fill, dtype=t.dtype, device=t.device)
        view = buf[..., : t.shape[-2], : t.shape[-1]]
    else:
        buf = torch.full((t.numel() + 1,), fill, dtype=t.dtype, device=t.device)
        view = buf[1:].view(t.shape)
    view.copy_(t)
    return view


def inject_special(args: tuple, index: int, seed: int) -> None:
    """In place: one NaN in one row of the primary input, and another row (if any) all zeros."""
    x = args[index]
    if not x.is_floating_point() or x.numel() == 0:
        return
    rows = x.reshape(-1, x.shape[-1]) if x.dim() else x.reshape(1, 1)  # a view: make_inputs is contiguous
    rng = random.Random(seed)
    nan_row = rng.randrange(rows.shape[0])
    rows[nan_row, rng.randrange(rows.shape[1])] = float("nan")
    if rows.shape[0] > 1:
        rows[(nan_row + 1 + rng.randrange(rows.shape[0] - 1)) % rows.shape[0]] = 0


def perturb(x: torch.Tensor, seed: int) -> None:
    """In place, `x` contiguous: change one element in every PERTURB_EVERY (at least one)."""
    gen = generator(seed, x.device)  # on the GPU its own: a host randperm of a prefill input took seconds
    count = max(1, x.numel() // PERTURB_EVERY)
    where = torch.randperm(x.numel(), generator=gen, device=gen.device)[:count].to(x.device)
    values = torch.randn(count, generator=gen, device=gen.device, dtype=torch.float32) * 2 + 3  # clearly new values
    x.view(-1)[where] = values.to(device=x.device, dtype=x.dtype)
