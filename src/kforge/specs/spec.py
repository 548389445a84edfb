"""`OpSpec`: everything kforge knows about one op, in one frozen dataclass.

An op's module (`kforge/specs/rms_norm.py`, ...) builds one `OpSpec`. Registration with
torch.library, the router's key, the test grid, benchmark shapes, the evaluator's error budget and
(later) the generation prompts are all derived from it.

Vocabulary:
- *shape*: the size tuple `make_inputs` builds every argument from: for most ops the shape of the
  primary input (the first tensor argument); an op may append dims its other inputs need (gemv's
  shape is x's shape plus the output features) and derive its options from them (topk_softmax's k).
  `input_shape` maps a problem back to a shape.
- *problem*: the op's own dims, derived from the arguments (`(rows, hidden)` for a norm). The
  router keys records on it. `exact_dims` must match a record exactly (kernels specialise on
  them); the other dims may be served by the nearest measured size, never beyond the sizes the
  record's evidence verified (see `router.key`).
- *oracle*: the reference run on float64 copies of the inputs.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping, Sequence

import torch

from kforge.errors import UnknownNameError

Shape = tuple[int, ...]
Problem = tuple[int, ...]

FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_SEED_FILE = re.compile(r"[a-z0-9][a-z0-9_]*\.py")  # a catalog file: no directory, no dotfile, no __init__
_FAMILY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")  # a knowledge file's stem, as kforge.gen.knowledge names it


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Resolution floor of the error budget, added to the reference's own low-precision error.

    See `kforge.testing` for the rule that combines it with the reference's own error.
    """

    atol: float
    rtol: float


def resolution_floor(dtype: torch.dtype, reduction: int, scale: float = 1.0) -> Tolerance:
    """One unit of `dtype`'s resolution at output magnitude `scale`, widened slowly with the
    length of the reduction each output depends on (rounding error grows ~sqrt(log n) for the
    tree reductions GPUs use)."""
    eps = torch.finfo(dtype).eps
    widen = math.sqrt(math.log2(max(reduction, 1) + 1))
    # fp32/fp64 results carry a few roundings (exp, division, the sum) that the output rounding
    # does not hide; for half types the output rounding, measured by the reference, dominates.
    # At fp64 the reference is the oracle (its own error is 0), so the band must also grow with
    # the reduction: vendor softmax in fp64 at 2x16384 erred 3.5e-18 against a 3.2e-18 band.
    roundings = 4.0 * widen if dtype in (torch.float32, torch.float64) else 1.0
    return Tolerance(atol=eps * widen * scale, rtol=roundings * eps)


@dataclasses.dataclass(frozen=True)
class Magnitude:
    """Inputs the evaluator also draws at another magnitude: the tensor arguments named in `args`
    multiplied by `factor` after `make_inputs`. `output` is how much the outputs' magnitude moves
    with it (the absolute floor of the error budget is multiplied by it): 1 for outputs that do not
    follow the inputs' scale (a norm's), `factor` for outputs linear in the scaled arguments. Powers
    of two keep an honest kernel's rounding exactly scale-covariant, so only a kernel that branches
    on magnitude (a clamp, a range it assumes, Newton steps from a fixed start) sees a difference."""

    factor: float
    args: tuple[str, ...]
    output: float = 1.0

    def __post_init__(self) -> None:
        if not (self.factor > 0 and math.isfinite(self.factor)) or not self.output > 0 or not self.args:
            raise ValueError(f"Magnitude needs a finite factor > 0, an output scale > 0 and arguments, got {self}")


def _schema_arguments(name: str, schema: str) -> tuple[tuple[str, ...], dict[str, Any], tuple[int, ...]]:
    parsed = torch._C.parse_schema(f"kforge::{schema}")
    if parsed.name != f"kforge::{name}":
        raise ValueError(f"OpSpec {name!r}: schema names {parsed.name!r}")
    names = tuple(a.name for a in parsed.arguments)
    defaults = {a.name: a.default_value for a in parsed.arguments if a.has_default_value()}
    tensors = tuple(i for i, a in enumerate(parsed.arguments) if str(a.type) == "Tensor")
    return names, defaults, tensors


@dataclasses.dataclass(frozen=True, eq=False)  # identity equality: one spec object per op
class OpSpec:
    """The whole meaning of one op. See the module docstring for the vocabulary."""

    name: str
    schema: str  # torch.library schema without namespace: "rms_norm(Tensor x, ...) -> Tensor"
    description: str
    reference: Callable[..., Any]  # eager, CPU-runnable; computes in float64 when given float64
    vendor: Callable[..., Any]  # the best PyTorch has; must accept every valid call
    fake: Callable[..., Any]  # meta implementation: output metadata only
    make_inputs: Callable[[Shape, torch.dtype, Any, int], tuple]  # (shape, dtype, device, seed)
    check: Callable[[tuple], None]  # raises KforgeInputError naming the argument
    problem: Callable[[tuple], Problem]  # the op's dims from a call's arguments
    problem_dims: tuple[str, ...]  # names of the problem dims: ("rows", "hidden")
    exact_dims: tuple[str, ...]  # dims a record must match exactly
    dtypes: tuple[torch.dtype, ...]  # dtypes of the primary input the op is defined for
    tolerance: Callable[[torch.dtype, Problem], Tolerance]
    bytes_moved: Callable[[Problem, torch.dtype], int]  # minimum bytes through device memory
    flops: Callable[[Problem, torch.dtype], int]
    shape_sets: Mapping[str, tuple[Shape, ...]]
    # Raises KforgeInputError for values `check` cannot see (indices, positions out of range): run
    # on every call on CPU tensors, where reading them costs no device sync; None: nothing to read.
    check_values: Callable[[tuple], None] | None = None
    num_outputs: int = 1
    # The outputs as compared with the reference's, for outputs that are not plain values: given
    # (args, outputs) it returns floating tensors, one per output, and raises `OutputMismatch` for
    # an output no budget can excuse (topk_softmax: indices out of range or repeated; its indices
    # are compared through the probabilities they select, so ties may break either way).
    compare_view: Callable[[tuple, tuple], tuple] | None = None
    # A shape (as make_inputs takes it) with the given problem; None: the problem is the shape.
    input_shape: Callable[[Problem], Shape] | None = None
    # The source prompts show as the reference's (user ops from a KernelBench file: the whole
    # file); None: read from `reference` and the helpers of its module.
    reference_source: str | None = None
    # Only the shapes in `shape_sets` are valid calls (a KernelBench file whose sizes cannot be
    # varied): the evaluator then tries no perturbed secret shapes, only secret seeds, and the
    # router serves no shape but a verified one (every dim counts as exact, `router.key`).
    fixed_shapes: bool = False
    # Magnitudes the evaluator also draws inputs at (see `Magnitude`); None: the primary input at
    # 2^-10 (floor as it is) and 2^7 (floor x 2^7: loose where the op's scaling is unknown), each
    # case skipped where the reference is not finite there (outside the dtype's range).
    magnitudes: tuple[Magnitude, ...] | None = None
    # Other values of scalar arguments the evaluator tries, one at a time: name -> values.
    scalar_variants: Mapping[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    # (args, {name: value}) -> args with those scalar values in force; None: replace by name. For
    # ops where a scalar's meaning is also in the data (cross_entropy's ignore_index in the targets).
    vary: Callable[[tuple, Mapping[str, Any]], tuple] | None = None
    # The op's own secret shapes, for ops where only some dims may vary (a KernelBench file: the
    # sizes its globals define): (public shapes, a seeded random.Random, how many) -> shapes,
    # none of them public. None: the evaluator's general rule (`correctness._secret_shapes`).
    secret_shapes: Callable[[Sequence[Shape], Any, int], list[Shape]] | None = None
    # The op's seed kernels: file names in `kforge/catalog/`, best general-purpose first (what
    # `kforge.catalog.seeds` returns, the catalog provider starts from and the seed tests run).
    # Empty: the catalog has none (a user's op); generation then needs an LLM provider.
    seed_kernels: tuple[str, ...] = ()
    # The knowledge file the op shares (`kforge.gen.knowledge.family`): fused_add_rms_norm learns
    # from and writes to rms_norm's. None: a family of its own, named after the op.
    knowledge_family: str | None = None
    # Derived from `schema` in __post_init__.
    arg_names: tuple[str, ...] = dataclasses.field(init=False)
    defaults: Mapping[str, Any] = dataclasses.field(init=False)
    tensor_args: tuple[int, ...] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        names, defaults, tensors = _schema_arguments(self.name, self.schema)
        object.__setattr__(self, "arg_names", names)
        object.__setattr__(self, "defaults", defaults)
        object.__setattr__(self, "tensor_args", tensors)
        if not tensors:
            raise ValueError(f"OpSpec {self.name!r}: the schema takes no Tensor")
        unknown = set(self.exact_dims) - set(self.problem_dims)
        if unknown:
            raise ValueError(f"OpSpec {self.name!r}: exact_dims {sorted(unknown)} not in problem_dims")
        if not self.shape_sets or not all(self.shape_sets.values()):
            raise ValueError(f"OpSpec {self.name!r}: needs at least one non-empty shape set")
        if not self.dtypes:
            raise ValueError(f"OpSpec {self.name!r}: needs at least one dtype")
        bad = [f for f in self.seed_kernels if not _SEED_FILE.fullmatch(f)]
        if bad or len(set(self.seed_kernels)) != len(self.seed_kernels):
            raise ValueError(f"OpSpec {self.name!r}: seed_kernels {list(self.seed_kernels)} must be distinct "
                             "file names ('name.py', no directory) in kforge/catalog/")
        if self.knowledge_family is not None and not _FAMILY.fullmatch(self.knowledge_family):
            raise ValueError(f"OpSpec {self.name!r}: knowledge_family {self.knowledge_family!r} cannot name a "
                             "knowledge file")
        named = set(self.scalar_variants) | {a for m in self.magnitudes or () for a in m.args}
        if named - set(names):
            raise ValueError(f"OpSpec {self.name!r}: magnitudes or scalar_variants name unknown arguments "
                             f"{sorted(named - set(names))}")

    @property
    def qualname(self) -> str:
        return f"kforge::{self.name}"

    def bind(self, args: tuple, kwargs: Mapping[str, Any]) -> tuple:
        """Positional arguments with defaults filled in, as the schema orders them."""
        if len(args) > len(self.arg_names):
            raise TypeError(f"kforge.{self.name}() takes {len(self.arg_names)} arguments, got {len(args)}")
        bound = list(args)
        for name in self.arg_names[len(args):]:
            if name in kwargs:
                bound.append(kwargs[name])
            elif name in self.defaults:
                bound.append(self.defaults[name])
            else:
                raise TypeError(f"kforge.{self.name}() missing required argument '{name}'")
        extra = set(kwargs) - set(self.arg_names[len(args):])
        if extra:
            raise TypeError(f"kforge.{self.name}() got unexpected or repeated arguments {sorted(extra)}")
        return tuple(bound)

    def shapes(self, *sets: str) -> tuple[Shape, ...]:
        """The shapes of the named sets (all sets when none named), in order, without repeats."""
        names = sets or tuple(self.shape_sets)
        out: list[Shape] = []
        for name in names:
            if name not in self.shape_sets:
                raise UnknownNameError(f"shape set of {self.name}", name, self.shape_sets)
            out.extend(s for s in self.shape_sets[name] if s not in out)
        return tuple(out)

    def shape_for(self, problem: Problem) -> Shape:
        """A shape `make_inputs` builds a call of `problem` from."""
        return tuple(self.input_shape(tuple(problem)) if self.input_shape is not None else problem)

    def input_magnitudes(self) -> tuple[Magnitude, ...]:
        """`magnitudes`, or the default for ops that declare none."""
        if self.magnitudes is not None:
            return self.magnitudes
        primary = (self.arg_names[self.tensor_args[0]],)
        return (Magnitude(2.0 ** -10, primary), Magnitude(2.0 ** 7, primary, output=2.0 ** 7))

    def with_scalars(self, args: tuple, values: Mapping[str, Any]) -> tuple:
        """`args` with the scalar arguments in `values` (name -> value) in force."""
        if self.vary is not None:
            return tuple(self.vary(tuple(args), values))
        return tuple(values.get(name, a) for name, a in zip(self.arg_names, args))

    def oracle(self, args: tuple):
        """The reference on float64 copies of the floating-point tensor arguments."""
        return self.reference(*to_dtype(args, torch.float64))


class OutputMismatch(ValueError):
    """An output is wrong in a way no error budget excuses (raised by `OpSpec.compare_view`)."""


def to_dtype(args: tuple, dtype: torch.dtype) -> tuple:
    """Floating-point tensors in `args` cast (copied) to `dtype`; everything else as it is."""
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def generator(seed: int, device: Any = None) -> torch.Generator:
    """A generator for `device`'s inputs: on a CUDA device its own (drawing a prefill-sized input
    on the host and copying it over took ~1.5 s per input on the H200 host, most of a big key's
    verification), else the CPU's. A seed means the same data on every device of a kind, and on
    every CPU."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return torch.Generator(device=device).manual_seed(seed)
    return torch.Generator(device="cpu").manual_seed(seed)


_DRAWS = {torch.randn: torch.float32, torch.randint: torch.int64, torch.randperm: torch.int64}


class _NoDraws(torch.overrides.TorchFunctionMode):
    """Random draws as empty meta tensors of their size and dtype (the values do not matter to
    `check` and `problem`): a draw under `torch.device("meta")` is decomposed into meta ops one by
    one (~1 ms each), and one on a generator's device allocates the whole input."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DRAWS:
            size = (args[0],) if func is torch.randperm else args[-1] if func is torch.randint else args[0]
            return torch.empty(size, dtype=kwargs.get("dtype") or _DRAWS[func], device="meta")
        return func(*args, **kwargs)


def meta_inputs(spec: OpSpec, shape: Shape, dtype: torch.dtype) -> tuple:
    """`spec.make_inputs(shape, dtype)` on the meta device, with no memory and no draws: a call's
    metadata (its dispatch key, layout, checks) at any size, a 16384 x 262208 logits included."""
    with torch.device("meta"), _NoDraws():
        return spec.make_inputs(tuple(shape), dtype, "meta", 0)


def randn(shape: Shape, dtype: torch.dtype, device: Any, gen: torch.Generator, scale: float = 1.0, shift: float = 0.0):
    x = torch.randn(shape, generator=gen, device=gen.device, dtype=torch.float32) * scale + shift
    return x.to(device=device, dtype=dtype)


def prod(dims) -> int:
    out = 1
    for d in dims:
        out *= d
    return out
