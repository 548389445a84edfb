"""The `catalog` provider: kforge's seed kernels and mutations of their tunables. No key, no network.

    provider = CatalogProvider()
    completion = provider.complete(messages, context=GenerationContext(op="rms_norm", variant=1))

It ignores the prose and reads the context:
  - no parent: the op's seeds (its spec's `seed_kernels`) round-robin, each first as shipped, then
    its mutants; variant v takes the v-th of those not yet tried (all variants of such a round
    share no parent, so v is the rank among them);
  - a parent: a mutant that changes 1 or 2 of the parent's tunables, each to another value its
    `SEARCH_SPACE` lists (a module-level dict literal: constant name -> choices). Only the value
    expression of that module-level assignment is rewritten; comments and every other byte stay
    the parent's, so a mutant is exactly as safe as its parent. A parent without a SEARCH_SPACE
    (not a catalog kernel) is not mutated: the seeds are proposed instead.
Choices are deterministic: the same op, parent, exclude set and variant give the same source
(the order of a parent's mutants is keyed on the parent's hash, so variants of one round, which
share parent and exclude set, get distinct mutants). `context.seed` is not used: the search loop
hands each variant its own seed, and seeded picks would let siblings collide.

With the problem shapes in the context, mutants that launch exactly what the parent or an
already tried source launches at those shapes (same kernels, grids, constexprs, warps, stages) are
skipped: at hidden 4096 the rms_norm seed's MIN_TILE changes nothing, so of its 19 mutants only
those with another num_warps are worth timing. Launches are read by running `forward` on meta
tensors with the kernels replaced by recorders (no kernel compiles or runs).

Nothing left to propose raises ProviderExhausted("catalog: no untried variant ... left"), which the
search loop reads as the end of that lineage.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import itertools
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from kforge.catalog import all_seeds, seeds
from kforge.errors import KforgeError
from kforge.gen.types import Completion, GenerationContext, Message, Provider, ProviderError, ProviderExhausted, Usage
from kforge.ops import SPECS

SPACE_NAME = "SEARCH_SPACE"
MAX_CHANGES = 2  # tunables changed per mutant
_UNKNOWN = object()  # a tunable whose current value is not a literal


@dataclasses.dataclass(frozen=True)
class Tunable:
    """A module-level constant that SEARCH_SPACE lets the catalog change."""

    name: str
    choices: tuple[Any, ...]  # SEARCH_SPACE's values, in order, repeats dropped
    value: Any  # the source's current value (_UNKNOWN when it is not a literal)
    span: tuple[int, int]  # byte offsets of the assigned expression in the source

    @property
    def alternatives(self) -> tuple[Any, ...]:
        return tuple(c for c in self.choices if self.value is _UNKNOWN or not _same(c, self.value))


def _same(a: Any, b: Any) -> bool:
    return repr(a) == repr(b)  # type-aware: 1, 1.0 and True are different tunable values


def canonical(source: str) -> str:
    """`source` as code extraction gives it back from a fenced block (`kforge.gen.extract`): lines
    joined by "\\n", one final newline. Hashes of what the catalog proposes are taken on this."""
    return "\n".join(source.splitlines()) + "\n"


def sha256(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


# -- the search space of a source ------------------------------------------------------------------
def tunables(source: str) -> list[Tunable]:
    """The tunables `source` declares in its SEARCH_SPACE, in declaration order ([] when it
    declares none). Raises ProviderError when SEARCH_SPACE is not a dict literal of name ->
    non-empty list of literals, or names a constant the module does not assign exactly once."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ProviderError(f"catalog: the source does not parse: {exc}") from None
    assigned: dict[str, list[ast.expr]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            assigned.setdefault(node.targets[0].id, []).append(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            assigned.setdefault(node.target.id, []).append(node.value)
    if SPACE_NAME not in assigned:
        return []
    if len(assigned[SPACE_NAME]) != 1:
        raise ProviderError(f"catalog: {SPACE_NAME} is assigned {len(assigned[SPACE_NAME])} times at module level")
    try:
        space = ast.literal_eval(assigned[SPACE_NAME][0])
    except ValueError:
        raise ProviderError(f"catalog: {SPACE_NAME} must be a literal dict of name -> list of values") from None
    if not isinstance(space, dict):
        raise ProviderError(f"catalog: {SPACE_NAME} must be a dict, got {type(space).__name__}")
    starts = _line_starts(source)
    out = []
    for name, choices in space.items():
        if not isinstance(name, str) or name == SPACE_NAME or not isinstance(choices, (list, tuple)) or not choices:
            raise ProviderError(f"catalog: {SPACE_NAME}[{name!r}] must map a constant's name to a non-empty list "
                                f"of values, got {choices!r}")
        values = assigned.get(name, [])
        if len(values) != 1:
            raise ProviderError(f"catalog: {SPACE_NAME} names {name}, which the module assigns {len(values)} times "
                                "at top level (a tunable is one `NAME = literal` line)")
        node = values[0]
        try:
            value = ast.literal_eval(node)
        except ValueError:
            value = _UNKNOWN
        unique = tuple(c for i, c in enumerate(choices) if not any(_same(c, d) for d in choices[:i]))
        span = (starts[node.lineno - 1] + node.col_offset, starts[node.end_lineno - 1] + node.end_col_offset)
        out.append(Tunable(name, unique, value, span))
    return out


def _line_starts(source: str) -> list[int]:
    """Byte offset of each line's start (ast's col_offset counts UTF-8 bytes)."""
    starts, total = [], 0
    for line in source.encode().split(b"\n"):
        starts.append(total)
        total += len(line) + 1
    return starts


def rewrite(source: str, changes: Mapping[str, Any]) -> str:
    """`source` with each named tunable's value replaced by repr(new value); every other byte,
    comments included, unchanged."""
    by_name = {t.name: t for t in tunables(source)}
    unknown = sorted(set(changes) - set(by_name))
    if unknown:
        raise ProviderError(f"catalog: {unknown} are not tunables of the source; "
                            f"its {SPACE_NAME} has {sorted(by_name)}")
    data = source.encode()
    for name in sorted(changes, key=lambda n: by_name[n].span, reverse=True):  # last first: spans stay valid
        start, end = by_name[name].span
        data = data[:start] + repr(changes[name]).encode() + data[end:]
    return data.decode()


def _change_sets(source: str) -> list[dict[str, Any]]:
    """Every way to change 1..MAX_CHANGES tunables of `source` to other declared values, in the
    catalog's order: single and double changes interleaved, each kind ordered by a hash of the
    source and the change (fixed per source, spread over the tunables)."""
    ts = [t for t in tunables(source) if t.alternatives]
    key = sha256(canonical(source))
    kinds = []
    for k in range(1, min(MAX_CHANGES, len(ts)) + 1):
        sets = [dict(zip((t.name for t in group), values))
                for group in itertools.combinations(ts, k)
                for values in itertools.product(*(t.alternatives for t in group))]
        kinds.append(sorted(sets, key=lambda c: sha256(f"{key}|{_label(c)}")))
    return [c for row in itertools.zip_longest(*kinds) for c in row if c is not None]


def _label(changes: Mapping[str, Any]) -> str:
    return ", ".join(f"{name} = {value!r}" for name, value in sorted(changes.items()))


def neighbours(source: str) -> list[str]:
    """Every mutant of `source` (1..MAX_CHANGES tunables changed), canonical, in the catalog's order."""
    return [canonical(rewrite(source, c)) for c in _change_sets(source)]


def mutate(source: str, rng: random.Random, max_changes: int = MAX_CHANGES) -> str:
    """`source` with 1..max_changes of its tunables (chosen with `rng`) set to other declared
    values. Raises ProviderError when it declares nothing to change."""
    ts = [t for t in tunables(source) if t.alternatives]
    if not ts:
        raise ProviderError(f"catalog: the source declares no {SPACE_NAME} with alternatives: nothing to mutate")
    chosen = rng.sample(ts, rng.randint(1, min(max_changes, len(ts))))
    return rewrite(source, {t.name: rng.choice(t.alternatives) for t in chosen})


def space_size(source: str) -> int:
    """How many sources the tunables of `source` span (its own values counted), 1 with none."""
    size = 1
    for t in tunables(source):
        size *= len(t.choices) + (t.value is _UNKNOWN or not any(_same(c, t.value) for c in t.choices))
    return size


def variants(op: str) -> int:
    """How many distinct kernels the catalog can propose for `op`: the spaces of its seeds
    (0 for an op it has no seed for)."""
    return sum(space_size(p.read_text()) for p in seed_files(op))


def seed_files(op: str) -> list[Path]:
    """The seed kernels of `op` (none for an op not registered here, e.g. a user's)."""
    spec = SPECS.get(op)
    return seeds(spec) if spec is not None else []


# -- what a source launches --------------------------------------------------------------------------
class _Recorder:
    """Stands in for a @triton.jit kernel: `kernel[grid](*args, **kwargs)` records the launch."""

    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            g = grid(kwargs) if callable(grid) else grid
            self.log.append((self.name, tuple(g) if isinstance(g, (tuple, list)) else (g,),
                             tuple(map(_arg, args)), tuple(sorted((k, _arg(v)) for k, v in kwargs.items()))))
        return launch


def _arg(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), tuple(value.stride()), str(value.dtype))
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return type(value).__name__


@dataclasses.dataclass(frozen=True)
class Launches:
    """What a source's forward launches at the asked (shape, dtype) calls: two sources with equal
    signatures run the same kernels with the same grids, arguments, warps and stages there."""

    signature: tuple | None  # kernels, grids, arguments, warps, stages per call; None: cannot tell
    fits: bool = True  # its DOMAIN admits at least one of the (shape, dtype) calls


def launches(source: str, op: str, shapes: Sequence[Sequence[int]], dtypes: Sequence[str]) -> Launches:
    """What `forward` of `source` launches for each (shape, dtype) of `op` its DOMAIN admits,
    plus the values of tunables its kernels read as globals. The signature is None when that
    cannot be told without running kernels (autotuned kernels, a forward that fails on meta
    tensors, static findings)."""
    from kforge.candidate import candidate_from_module, load_module
    from kforge.evaluate.static import check_source
    from kforge.ops import get_spec
    from kforge.records import CallInfo, DispatchKey
    from kforge.router.key import dtype_signature

    try:
        spec = get_spec(op)
    except KforgeError:
        return Launches(None)
    if check_source(source, spec):
        return Launches(None)  # never execute what the checker would refuse
    sha = sha256(source)
    name = f"kforge_catalog_probe_{sha[:24]}"
    path = Path(tempfile.gettempdir()) / "kforge-catalog-probe" / f"{sha}.py"  # never written
    log: list = []
    try:
        module = load_module(path, name, source=source.encode())
        try:
            domain = candidate_from_module(module, spec).domain
            kernels = {k: v for k, v in vars(module).items() if _is_kernel(v)}
            if any(type(v).__name__ not in ("JITFunction", "InterpretedFunction") for v in kernels.values()):
                return Launches(None)  # autotune/heuristics choose their configs at run time
            for k in kernels:
                setattr(module, k, _Recorder(k, log))
            for shape, dtype in itertools.product(shapes, dtypes):
                with torch.device("meta"):  # shapes only: no data drawn, however large
                    args = spec.make_inputs(tuple(shape), getattr(torch, dtype), "meta", 0)
                key = DispatchKey(op, "", dtype_signature(args, spec.tensor_args), tuple(spec.problem(args)))
                inside = domain.rejects(CallInfo(key, contiguous=True, aligned=16, requires_grad=False),
                                        spec.problem_dims) is None
                log.append(("call" if inside else "outside", tuple(shape), dtype))
                if inside:
                    module.forward(*args)
        finally:
            sys.modules.pop(name, None)
    except Exception:  # noqa: BLE001 - any failure just means "cannot tell"
        return Launches(None)
    fits = any(entry[0] == "call" for entry in log)
    return Launches(tuple(log) + _kernel_globals(source), fits)


def _is_kernel(value: Any) -> bool:
    from triton.runtime.jit import KernelInterface

    return isinstance(value, KernelInterface)


def _kernel_globals(source: str) -> tuple:
    """(name, value) of the tunables that @triton.jit functions read directly."""
    tree = ast.parse(source)
    read = {n.id for f in tree.body if isinstance(f, ast.FunctionDef)
            and any("jit" in ast.unparse(d) for d in f.decorator_list)
            for n in ast.walk(f) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return tuple((t.name, repr(t.value)) for t in tunables(source) if t.name in read)


# -- the provider ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Option:
    source: str  # canonical
    what: str  # one line for the archive: which seed, what changed
    changes: int = 0  # tunables changed


class CatalogProvider(Provider):
    """Proposes seeds and their mutants; see the module docstring. `config` (a ProviderConfig) is
    accepted for the registry's sake: the catalog has nothing to configure."""

    name = "catalog"
    reflects = False  # it enumerates kernels and writes no prose

    def __init__(self, config: Any = None):
        self.config = config
        self._launches: dict[tuple, Launches] = {}

    def complete(self, messages: Sequence[Message], *, context: GenerationContext | None = None,
                 **params: Any) -> Completion:
        started = time.monotonic()
        if context is None:
            raise ProviderError("catalog: needs the GenerationContext (op, parent, variant); it reads no prose")
        parent = None if context.parent_source is None else canonical(context.parent_source)
        from_seeds = parent is None or not tunables(parent)  # a parent that is no catalog kernel: seeds
        if from_seeds and not seed_files(context.op):
            with_seeds = ", ".join(sorted(all_seeds(SPECS.values())))
            raise ProviderError(f"catalog: no seed kernel for op '{context.op}' (it has seeds for {with_seeds}); "
                                "use an LLM provider (anthropic, openai or command) to write one")
        options = self._seed_options(context.op) if from_seeds else self._mutants(parent)
        of = f"the {context.op} seeds" if from_seeds else f"parent {sha256(parent)[:12]}"
        # A round without a parent takes the variant-th option: only the first variant + 1 need probing.
        remaining = self._untried(options, context, parent, need=context.variant + 1 if from_seeds else None)
        # Variants without a parent all share one list, so variant v is its rank there; a parent's
        # variants may be spread over several lineages (every K-th variant), so wrap instead.
        if not remaining or (from_seeds and context.variant >= len(remaining)):
            raise ProviderExhausted(f"catalog: no untried variant of {of} left for variant {context.variant} "
                                f"({len(remaining)} new among {len(options)}): what its {SPACE_NAME} allows within "
                                f"{MAX_CHANGES} changes has been tried, launches the same as what was, or has a "
                                f"DOMAIN that excludes every shape asked for")
        pick = remaining[context.variant % len(remaining)]
        fence = "`" * max(3, 1 + max(map(len, re.findall("`+", pick.source)), default=0))
        text = f"catalog: {pick.what}\n\n{fence}python\n{pick.source}{fence}\n"
        return Completion(text=text, provider=self.name, model="catalog", usage=Usage(),
                          latency_s=time.monotonic() - started)

    def _seed_options(self, op: str) -> list[_Option]:
        """Seeds round-robin: each as shipped first, then each one's mutants."""
        per_seed = []
        for path in seed_files(op):
            source = canonical(path.read_text())
            per_seed.append([_Option(source, f"seed {path.name} as shipped")] +
                            [_Option(canonical(rewrite(source, c)), f"seed {path.name} with {_label(c)}", len(c))
                             for c in _change_sets(source)])
        return [o for row in itertools.zip_longest(*per_seed) for o in row if o is not None]

    def _mutants(self, parent: str) -> list[_Option]:
        old = {t.name: t.value for t in tunables(parent)}
        return [_Option(canonical(rewrite(parent, c)), f"parent {sha256(parent)[:12]} with " + ", ".join(
            f"{n} = {v!r} (was {'?' if old[n] is _UNKNOWN else repr(old[n])})" for n, v in sorted(c.items())), len(c))
                for c in _change_sets(parent)]

    def _untried(self, options: list[_Option], context: GenerationContext, parent: str | None,
                 need: int | None = None) -> list[_Option]:
        """`options` minus the tried ones (by hash) and, with shapes to probe, minus those that
        launch what the parent or a tried option launches. Of options that launch the same, one
        is kept, at the place of the first: the one with the fewest changes (no change made for
        nothing at these shapes, which could still cost at others). With `need`, only the first
        `need` of the list are exact (the rest may be missing): probing stops once no later
        option could change them (a probe runs the static check and forward on meta tensors,
        ~40 ms: the rms_norm seeds and their mutants cost 3 s, most of a catalog proposal)."""
        tried = set(context.exclude) | ({sha256(parent)} if parent else set())
        fresh = [o for o in options if sha256(o.source) not in tried]
        if not context.shapes:
            return fresh
        probe = lambda s: self._probe(s, context)  # noqa: E731
        seen = {probe(o.source).signature for o in options if sha256(o.source) in tried}
        if parent is not None:
            seen.add(probe(parent).signature)
        seen.discard(None)
        kept: dict[Any, _Option] = {}  # signature -> representative, in order of first appearance
        for i, option in enumerate(fresh):
            if need is not None and len(kept) >= need:
                first = list(kept.values())[:need]
                if option.changes >= max(o.changes for o in first):
                    continue  # a new signature lands after the first `need`; a same one would not replace
            launched = probe(option.source)
            if not launched.fits:
                continue  # its DOMAIN excludes every shape asked for: nothing would be timed
            signature = ("unknown", i) if launched.signature is None else launched.signature
            if signature not in seen and (signature not in kept or option.changes < kept[signature].changes):
                kept[signature] = option
        return list(kept.values())

    def _probe(self, source: str, context: GenerationContext) -> Launches:
        dtypes = context.dtypes or ("float32",)
        key = (sha256(source), context.op, tuple(map(tuple, context.shapes)), tuple(dtypes))
        if key not in self._launches:
            self._launches[key] = launches(source, context.op, context.shapes, dtypes)
        return self._launches[key]
