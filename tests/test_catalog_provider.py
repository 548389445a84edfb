"""The `catalog` provider (kforge.gen.providers.catalog): seeds first, then mutants that rewrite only
the tunables a seed's SEARCH_SPACE declares; deterministic, honouring the sources already tried,
skipping mutants that launch what was already tried at the asked shapes, and saying when nothing
is left. Every seed and mutant passes the static checks, and mutants compute the right answer
(Triton's interpreter on CPU, tiny shapes)."""
from __future__ import annotations

import ast
import difflib
import random

import pytest
import torch

from kforge.backends.triton import TritonBackend
from kforge import catalog
from kforge.catalog import seeds
from kforge.evaluate.static import check_source
from kforge.gen import extract
from kforge.gen.providers.catalog import (CatalogProvider, canonical, mutate, neighbours, rewrite, sha256,
                                          space_size, tunables, variants)
from kforge.gen.types import Completion, GenerationContext, Message, ProviderError, Role, Usage
from kforge.ops import SPECS, get_spec
from kforge.store import KernelStore
from kforge.testing import assert_matches_reference

SEED_FILES = [(op, path) for op, spec in SPECS.items() for path in seeds(spec)]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # else Triton's interpreter (conftest.py)
SEED_IDS = [path.stem for _, path in SEED_FILES]
MESSAGES = [Message(Role.USER, "write a faster kernel")]  # the catalog reads none of it
NORM_WARPS_B = ((32768, 16), (8192, 8), (2048, 4), (0, 2))  # a NUM_WARPS choice of the rowwise seeds
NORM_WARPS_C = ((16384, 32), (4096, 16), (1024, 8), (0, 4))


def ask(op: str, **context) -> str:
    """The source the catalog proposes, taken from its answer the way the search loop takes it."""
    completion = CatalogProvider(None).complete(MESSAGES, context=GenerationContext(op=op, **context))
    extracted = extract.check_answer(completion.text, get_spec(op), parent_source=context.get("parent_source"))
    assert not extracted.findings, extracted.findings
    return extracted.source


def values(source: str) -> dict:
    return {t.name: t.value for t in tunables(source)}


def changed(before: str, after: str) -> set[str]:
    old, new = values(before), values(after)
    assert old.keys() == new.keys()
    return {name for name in old if repr(old[name]) != repr(new[name])}


def seed_source(op: str, index: int = 0) -> str:
    return seeds(SPECS[op])[index].read_text()


# -- which op a seed is for: its spec says (the catalog keeps no table) -------------------------------
def test_every_catalog_file_is_the_seed_of_exactly_one_op_and_every_named_seed_exists():
    named = [name for spec in SPECS.values() for name in spec.seed_kernels]
    assert sorted(named) == [p.name for p in catalog.files()], "a catalog file no spec names, or named twice"
    assert all(path.is_file() for _, path in SEED_FILES)
    assert catalog.all_seeds(SPECS.values()) == {op: seeds(spec) for op, spec in SPECS.items() if spec.seed_kernels}


# -- the seeds' search spaces ------------------------------------------------------------------------
@pytest.mark.parametrize("op, path", SEED_FILES, ids=SEED_IDS)
def test_each_seed_declares_its_tunables_with_the_shipped_value_among_the_choices(op, path):
    source = path.read_text()
    ts = tunables(source)
    assert ts and all(len(t.choices) >= 2 for t in ts)
    data = source.encode()
    for t in ts:
        assert any(repr(c) == repr(t.value) for c in t.choices), t.name
        # Written as repr writes it: a mutant set back to the shipped value is the shipped file.
        assert data[t.span[0]:t.span[1]].decode() == repr(t.value), t.name
    assert canonical(source) == source


def test_the_size_of_each_ops_space():
    # rowwise seeds: MIN_TILE (5 choices) x NUM_WARPS tables (4); softmax_online: 4 x 3 x 4
    known = [seed_source("rms_norm"), seed_source("fused_add_rms_norm"), seed_source("softmax", 0), seed_source("softmax", 1)]
    assert [space_size(source) for source in known] == [20, 20, 20, 48]
    # softmax: rowwise 20 + online 48 + split (PROGRAMS 4 x BLOCK 3 x NUM_WARPS 3) 36
    assert [variants(op) for op in ("rms_norm", "fused_add_rms_norm", "softmax", "mine")] == [20, 20, 104, 0]


# -- rewriting ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("op, path", SEED_FILES, ids=SEED_IDS)
def test_mutants_change_only_the_declared_assignments(op, path):
    source = path.read_text()
    spans = {t.name: t for t in tunables(source)}
    lines_of = {name: set(range(source.encode()[:t.span[0]].count(b"\n"), source.encode()[:t.span[1]].count(b"\n") + 1))
                for name, t in spans.items()}
    mutants = [mutate(source, random.Random(i)) for i in range(12)]
    assert len(set(mutants)) > 3
    for mutant in mutants:
        names = changed(source, mutant)
        assert 1 <= len(names) <= 2
        for name in names:
            assert any(repr(c) == repr(values(mutant)[name]) for c in spans[name].choices)
        allowed = set().union(*(lines_of[n] for n in names))
        diff = difflib.SequenceMatcher(None, source.splitlines(), mutant.splitlines())
        edited = {i for tag, i1, i2, _, _ in diff.get_opcodes() if tag != "equal" for i in range(i1, i2)}
        assert edited and edited <= allowed, (names, edited, allowed)
        assert len(mutant.splitlines()) == len(source.splitlines())  # one-line values stay one line
        # Set back, it is the shipped file again.
        assert rewrite(mutant, {n: values(source)[n] for n in names}) == source


def test_rewrite_keeps_comments_and_counts_bytes_not_characters():
    source = ('T = "é"; A = 1  # größe, kept\n'
              'B = (\n    1,\n    2,\n)  # a multi-line value, kept\n'
              'C = 2 ** 12  # not a literal\n'
              'SEARCH_SPACE = {"A": [1, 2], "B": [(1, 2), (3, 4)], "C": [4096, 8192]}\n'
              'def forward(x):\n    return A\n')
    assert values(source)["A"] == 1 and values(source)["B"] == (1, 2)
    out = rewrite(source, {"A": 2, "B": (3, 4), "C": 8192})
    assert out == ('T = "é"; A = 2  # größe, kept\n'
                   'B = (3, 4)  # a multi-line value, kept\n'
                   'C = 8192  # not a literal\n' + source.split("# not a literal\n")[1])
    # A value that is not a literal has every choice as an alternative; (1, 2) is B's own.
    assert [t.alternatives for t in tunables(source)] == [(2,), ((3, 4),), (4096, 8192)]


@pytest.mark.parametrize("space, message", [
    ('{"MISSING": [1, 2]}', "names MISSING, which the module assigns 0 times"),
    ('{"A": [1, 2]}\nA = 3', "names A, which the module assigns 2 times"),
    ('{"A": []}', "non-empty list"),
    ('dict(A=[1, 2])', "literal dict"),
])
def test_a_malformed_search_space_is_a_clear_error(space, message):
    source = f"A = 1\nSEARCH_SPACE = {space}\n"
    with pytest.raises(ProviderError, match=message):
        tunables(source)
    with pytest.raises(ProviderError, match=message):
        CatalogProvider().complete(MESSAGES, context=GenerationContext(op="rms_norm", parent_source=source))


# -- proposing ---------------------------------------------------------------------------------------
def test_the_same_context_gives_the_same_answer():
    parent = seed_source("rms_norm")
    for context in (GenerationContext(op="softmax", variant=3),
                    GenerationContext(op="rms_norm", variant=2, parent_source=parent, exclude=frozenset({"0" * 64})),
                    GenerationContext(op="rms_norm", variant=1, shapes=((4, 128),), dtypes=("float32",))):
        first = CatalogProvider(None).complete(MESSAGES, context=context)
        again = CatalogProvider(object()).complete([], context=context)  # another instance, config, prose
        assert first.text == again.text
        assert (first.provider, first.model, first.usage) == ("catalog", "catalog", Usage())
        assert isinstance(first, Completion) and "```python\n" in first.text


def test_without_a_parent_the_seeds_come_round_robin_shipped_first():
    rowwise, online, split = (seed_source("softmax", i) for i in range(3))
    proposed = [ask("softmax", variant=v) for v in range(9)]
    assert proposed[:3] == [rowwise, online, split]
    for n, seed in enumerate((rowwise, online, split)):  # then a mutant of each, in turn
        assert [bool(changed(seed, s)) for s in proposed[3 + n::3]] == [True, True]
    assert len(set(proposed)) == 9
    assert ask("rms_norm", variant=0) == seed_source("rms_norm")


def test_variants_of_one_parent_get_distinct_mutants():
    """The variants of a round share parent and exclude set: each gets another mutant."""
    parent = seed_source("softmax", 1)
    proposed = [ask("softmax", variant=v, parent_source=parent) for v in range(8)]
    assert len(set(proposed)) == 8 and parent not in proposed
    assert all(1 <= len(changed(parent, s)) <= 2 for s in proposed)
    other = ask("softmax", variant=0, parent_source=proposed[0])
    assert other not in (proposed[0], parent)  # another parent, another neighbourhood


def test_the_excluded_sources_are_not_proposed_again_until_none_is_left():
    parent = seed_source("rms_norm")
    tried: set[str] = {sha256(parent)}
    proposed = []
    for _ in range(30):
        try:
            source = ask("rms_norm", parent_source=parent, exclude=frozenset(tried))
        except ProviderError as exc:
            # The search loop reads this phrase as "this lineage is exhausted".
            assert "no untried variant" in str(exc)
            break
        assert sha256(source) not in tried  # the hash the search loop takes of what it extracted
        tried.add(sha256(source))
        proposed.append(source)
    else:
        pytest.fail("the catalog kept proposing after its 19 mutants")
    assert sorted(proposed) == sorted(neighbours(parent)) and len(proposed) == 19  # 20 settings but its own


def test_mutants_that_launch_what_was_tried_are_skipped():
    """At hidden 4096 MIN_TILE changes nothing (no row is short), and table D gives the seed's 8
    warps: of 19 mutants of the rms_norm seed only two launch something new (4 and 16 warps)."""
    shapes = dict(shapes=((32, 4096),), dtypes=("bfloat16",))
    seed = seed_source("rms_norm")
    round0 = [ask("rms_norm", variant=v, **shapes) for v in range(3)]
    assert round0[0] == seed
    assert [changed(seed, s) for s in round0[1:]] == [{"NUM_WARPS"}] * 2  # no idle MIN_TILE change
    assert {values(s)["NUM_WARPS"] for s in round0[1:]} == {NORM_WARPS_B, NORM_WARPS_C}
    with pytest.raises(ProviderError, match="no untried variant of the rms_norm seeds left for variant 3"):
        ask("rms_norm", variant=3, **shapes)
    tried = frozenset(map(sha256, round0))
    with pytest.raises(ProviderError, match="no untried variant of the rms_norm seeds"):
        ask("rms_norm", variant=0, exclude=tried, **shapes)
    with pytest.raises(ProviderError, match="no untried variant of parent"):
        ask("rms_norm", parent_source=round0[2], exclude=tried, **shapes)
    # Short rows are packed MIN_TILE // 128 to a program: there MIN_TILE matters.
    short = [ask("rms_norm", variant=v, shapes=((4096, 128),), dtypes=("bfloat16",)) for v in range(8)]
    assert len(set(short)) == 8 and any("MIN_TILE" in changed(seed, s) for s in short)


@pytest.mark.parametrize("op, shape", [("softmax", (8, 200)), ("gemv", (8, 100, 64)), ("rms_norm", (32, 4096))])
def test_a_round_without_a_parent_probes_only_what_its_variant_needs(monkeypatch, op, shape):
    """Variant v of a round without a parent is the v-th option left after the launch check: it is
    the one the whole list would give, and for variant 0 (a seed as shipped) nothing else is probed
    (each probe costs ~40 ms; all of gemv's 82 options took 3 s of every catalog proposal)."""
    import kforge.gen.providers.catalog as module

    probed = []
    real = module.launches
    monkeypatch.setattr(module, "launches", lambda source, *a: probed.append(source) or real(source, *a))
    provider = CatalogProvider()
    options = provider._seed_options(op)
    for v in (0, 1, 2):
        context = GenerationContext(op=op, variant=v, shapes=(shape,), dtypes=("bfloat16", "float32"))
        probed.clear()
        lazy = provider._untried(options, context, None, need=v + 1)
        first = len(probed)
        whole = CatalogProvider()._untried(options, context, None)
        assert lazy[:v + 1] == whole[:v + 1] and len(whole) > v
        if v == 0:  # the first seed as shipped: no later option can launch the same with fewer changes
            assert first == 1, first
    assert ask(op, variant=0, shapes=(shape,), dtypes=("bfloat16", "float32")) == whole[0].source


def test_seeds_whose_domain_excludes_every_shape_are_not_proposed():
    """softmax_rowwise holds rows of at most 65536 columns; a vocabulary row goes to softmax_online
    and softmax_split, in turn."""
    proposed = [ask("softmax", variant=v, shapes=((32, 151936),), dtypes=("bfloat16",)) for v in range(6)]
    assert proposed[:2] == [seed_source("softmax", 1), seed_source("softmax", 2)]
    assert all("_softmax_online_row[" in s for s in proposed[0::2]) and all("_chunk_stats[" in s for s in proposed[1::2])
    assert len(set(proposed)) == 6


def test_a_parent_that_is_no_catalog_kernel_starts_from_the_seeds():
    parent = seed_source("rms_norm").replace("SEARCH_SPACE", "SPACE")  # no SEARCH_SPACE left
    assert ask("rms_norm", parent_source=parent) == seed_source("rms_norm")


def test_an_op_without_a_seed_is_refused_with_advice():
    with pytest.raises(ProviderError, match=r"no seed kernel for op 'my_op'.*use an LLM provider"):
        CatalogProvider().complete(MESSAGES, context=GenerationContext(op="my_op"))
    with pytest.raises(ProviderError, match="needs the GenerationContext"):
        CatalogProvider().complete(MESSAGES)


# -- the proposals are valid candidates ----------------------------------------------------------------
@pytest.mark.parametrize("op, path", SEED_FILES, ids=SEED_IDS)
def test_seeds_and_all_their_mutants_pass_the_static_checks(op, path):
    spec = get_spec(op)
    source = path.read_text()
    assert check_source(source, spec) == []
    for mutant in neighbours(source):
        assert check_source(mutant, spec) == []
        ast.parse(mutant)


# Mutants that take each path of their seed at the tiny shapes below: the packed kernel with
# partial tiles (ROWS 4 and 64 at hidden 64) and one row per program (MIN_TILE <= BLOCK), and the
# online kernel's column loop over several blocks (MAX_BLOCK 1024 at 2100 columns).
MUTANTS = {
    "rms_norm_rowwise": [{"MIN_TILE": 256, "NUM_WARPS": NORM_WARPS_B}, {"MIN_TILE": 4096}],
    "fused_add_rms_norm_rowwise": [{"MIN_TILE": 256, "NUM_WARPS": NORM_WARPS_C}, {"MIN_TILE": 4096}],
    "softmax_rowwise": [{"MIN_TILE": 256, "NUM_WARPS": NORM_WARPS_B}, {"MIN_TILE": 4096}],
    "softmax_online": [{"MAX_BLOCK": 1024, "NUM_STAGES": 1}, {"NUM_WARPS": 4, "NUM_STAGES": 4}],
    # Several chunks per row (3 of 1024 columns at 2100), and one chunk per row.
    "softmax_split": [{"PROGRAMS": 264, "BLOCK": 1024}, {"BLOCK": 4096, "NUM_WARPS": 4}],
}
SHAPES = {"softmax_online": ((3, 2100), (2, 5)), "softmax_split": ((3, 2100), (2, 5)),
          "default": ((3, 64), (70, 5), (2, 3, 200))}


def mutants_of(path) -> list[dict]:
    """The MUTANTS above, or for a seed without an entry two of the catalog's own neighbours."""
    if path.stem in MUTANTS:
        return MUTANTS[path.stem]
    source = path.read_text()
    picks = [mutate(source, random.Random(i)) for i in range(2)]
    return [{t.name: t.value for t in tunables(m) if t.name in changed(source, m)} for m in picks]


def shapes_of(op, path) -> tuple:
    """Tiny shapes for the interpreter: SHAPES above for the norms and softmax, else the op's smoke set."""
    if path.stem in SHAPES:
        return SHAPES[path.stem]
    return SHAPES["default"] if op in ("rms_norm", "fused_add_rms_norm", "softmax") else get_spec(op).shapes("smoke")


@pytest.mark.skipif(TritonBackend().available() is not None,
                    reason=f"Triton cannot run here: {TritonBackend().available()}")
@pytest.mark.parametrize("op, path", SEED_FILES, ids=SEED_IDS)
def test_mutants_match_the_reference(op, path):
    spec = get_spec(op)
    for changes in mutants_of(path):
        source = rewrite(path.read_text(), changes)
        assert neighbours(path.read_text()).count(canonical(source)) == 1  # one the catalog proposes
        kernel = KernelStore().put(source, op=op, provider="catalog")
        candidate = KernelStore().load(kernel.sha256, spec)
        for shape in shapes_of(op, path):
            for dtype in (torch.float32, torch.bfloat16):
                args = spec.make_inputs(shape, dtype, DEVICE, 1)
                assert_matches_reference(spec, args, candidate.forward(*args))
