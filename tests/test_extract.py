"""Response handling (`kforge.gen.extract`): code from a model's answer, EVOLVE-BLOCK splicing,
static findings and the corrective re-prompt."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from kforge.evaluate.static import Rule
from kforge.gen.extract import (EVOLVE_END, EVOLVE_START, ExtractionError, Problem, check_answer, code_blocks,
                                corrective_message, evolve_region, extract_source)
from kforge.gen.types import Role
from kforge.ops import get_spec

SEED = (Path(__file__).resolve().parent / "candidates" / "rms_norm_rowwise.py").read_text()  # an honest candidate
TUNABLES = 'MIN_BLOCK = 16\nNUM_WARPS = ((32768, 32), (8192, 16), (2048, 8), (0, 4))  # (BLOCK at least, num_warps)\n'
assert TUNABLES in SEED
PARENT = SEED.replace(TUNABLES, f"{EVOLVE_START}\n{TUNABLES}{EVOLVE_END}\n")
NEW_TUNABLES = "MIN_BLOCK = 32\nNUM_WARPS = ((8192, 16), (0, 8))\n"


def fenced(code: str, tag: str = "python") -> str:
    return f"```{tag}\n{code.rstrip()}\n```"


def outside(source: str) -> tuple[str, str]:
    start, end = evolve_region(source)
    return source[:start], source[end:]


def test_a_single_fenced_block_is_the_source():
    assert extract_source(fenced(SEED)) == SEED


def test_a_block_wrapped_in_prose_is_found():
    answer = f"Here is a faster kernel.\n\nIt keeps the row in registers:\n\n{fenced(SEED)}\n\nThe fp32 sum is exact enough."
    assert extract_source(answer) == SEED


def test_of_several_complete_blocks_the_last_wins_and_other_languages_are_ignored():
    draft = SEED.replace("MIN_BLOCK = 16", "MIN_BLOCK = 64")
    answer = (f"First attempt:\n{fenced(draft)}\nOn second thought:\n{fenced(SEED)}\n"
              f"Run it with:\n{fenced('python -m kforge evaluate kernel.py', 'bash')}\n")
    assert extract_source(answer) == SEED
    assert [b.lang for b in code_blocks(answer)] == ["python", "python", "bash"]


def test_longer_and_tilde_fences_hold_triple_backticks():
    code = SEED.replace('"""rms_norm,', '"""Use as ```forward(x, w)```. rms_norm,')
    assert extract_source(f"~~~python\n{code}~~~\n") == code
    assert extract_source(f"````py\n{code}````\n") == code


def test_a_file_split_over_blocks_is_joined():
    cut = SEED.index("def _num_warps")
    answer = f"The kernel:\n{fenced(SEED[:cut])}\nAnd the host side:\n{fenced(SEED[cut:])}\n"
    source = extract_source(answer)
    assert "def forward(" in source and "@triton.jit" in source
    assert check_answer(answer, get_spec("rms_norm")).ok


def test_blocks_that_do_not_form_a_file_are_ambiguous():
    answer = f"{fenced('x = 1')}\nor\n{fenced('y = 2')}\n"
    with pytest.raises(ExtractionError) as err:
        extract_source(answer)
    assert err.value.problem is Problem.AMBIGUOUS
    assert "2 code blocks" in str(err.value)


def test_no_code_block_is_an_error():
    with pytest.raises(ExtractionError) as err:
        extract_source("I would write one program per row and accumulate in fp32.")
    assert err.value.problem is Problem.NO_CODE
    assert "```python" in str(err.value)


def test_a_bare_python_file_without_fences_is_accepted():
    assert extract_source(SEED) == SEED


def test_a_syntax_error_names_its_line():
    broken = "import triton\n\ndef forward(x):\n    return x +\n"
    with pytest.raises(ExtractionError) as err:
        extract_source(f"Here:\n{fenced(broken)}\n")
    assert err.value.problem is Problem.SYNTAX
    assert err.value.line == 4
    assert "line 4" in str(err.value) and "return x +" in str(err.value)


def test_a_block_cut_off_by_the_token_limit_says_so():
    answer = "```python\n" + SEED[: SEED.index("    rows = x.numel()")] + "    rows = (x.numel("
    with pytest.raises(ExtractionError) as err:
        extract_source(answer)
    assert err.value.problem is Problem.SYNTAX and "cut off" in str(err.value)


def test_evolve_region_is_spliced_and_everything_outside_the_markers_is_byte_identical():
    answer = f"Smaller blocks:\n{fenced(EVOLVE_START + chr(10) + NEW_TUNABLES + EVOLVE_END)}\n"
    source = extract_source(answer, parent_source=PARENT)
    assert outside(source) == outside(PARENT)
    start, end = evolve_region(source)
    assert source[start:end] == NEW_TUNABLES
    assert source == PARENT.replace(TUNABLES, NEW_TUNABLES)


def test_evolve_region_without_markers_in_the_answer_is_spliced_too():
    extracted = check_answer(fenced(NEW_TUNABLES), get_spec("rms_norm"), parent_source=PARENT)
    assert extracted.spliced and extracted.ok
    assert extracted.source == PARENT.replace(TUNABLES, NEW_TUNABLES)


def test_an_indented_region_is_reindented_to_its_markers():
    parent = ("import torch\nimport triton\n\n\ndef forward(x):\n    y = torch.empty_like(x)\n"
              f"    {EVOLVE_START}\n    block = 16\n    {EVOLVE_END}\n    return y\n")
    source = extract_source(fenced("block = 64\nwarps = 4"), parent_source=parent)
    assert source == parent.replace("    block = 16\n", "    block = 64\n    warps = 4\n")


def test_without_evolve_a_marked_whole_file_is_taken_as_it_is():
    rewritten = PARENT.replace("MIN_BLOCK = 16", "MIN_BLOCK = 128").replace("num_warps=_num_warps(block)", "num_warps=4")
    assert extract_source(fenced(rewritten), parent_source=PARENT, evolve=False) == rewritten
    # Asked for a region, the same answer changes the region only.
    spliced = extract_source(fenced(rewritten), parent_source=PARENT)
    assert outside(spliced) == outside(PARENT) and "MIN_BLOCK = 128" in spliced


def test_a_whole_file_answer_to_an_evolve_prompt_is_taken_as_the_file():
    rewritten = SEED.replace("MIN_BLOCK = 16", "MIN_BLOCK = 128")
    extracted = check_answer(fenced(rewritten), get_spec("rms_norm"), parent_source=PARENT)
    assert extracted.source == rewritten and not extracted.spliced


@pytest.mark.parametrize("parent,answer,where", [
    (PARENT.replace(EVOLVE_END + "\n", ""), fenced(NEW_TUNABLES), "the parent"),
    (PARENT, fenced(f"{EVOLVE_START}\n{NEW_TUNABLES}{EVOLVE_START}\n{EVOLVE_END}"), "the code block at line 2"),
    (SEED.replace(TUNABLES, f"{EVOLVE_END}\n{TUNABLES}{EVOLVE_START}\n"), fenced(NEW_TUNABLES), "the parent"),
])
def test_unbalanced_markers_are_an_error(parent, answer, where):
    with pytest.raises(ExtractionError) as err:
        extract_source(answer, parent_source=parent)
    assert err.value.problem is Problem.MARKERS
    assert str(err.value).startswith(where)


def test_a_region_that_breaks_the_file_reports_the_spliced_line():
    with pytest.raises(ExtractionError) as err:
        extract_source(fenced("MIN_BLOCK = (16\n"), parent_source=PARENT)
    assert err.value.problem is Problem.SYNTAX
    start_line = PARENT[:evolve_region(PARENT)[0]].count("\n") + 1
    assert f"the region starts at line {start_line}" in str(err.value)


def test_static_findings_are_returned_for_a_source_computing_with_torch():
    cheat = SEED.replace("    rows = x.numel() // hidden\n",
                         "    return torch.nn.functional.rms_norm(x, (hidden,), weight, eps)\n"
                         "    rows = x.numel() // hidden\n")
    extracted = check_answer(f"Simpler:\n{fenced(cheat)}", get_spec("rms_norm"))
    assert not extracted.ok
    assert Rule.TORCH in {f.rule for f in extracted.findings}
    message = corrective_message(extracted)
    assert message.role is Role.USER
    assert "torch.nn.functional.rms_norm" in message.content
    assert str(extracted.findings[0]) in message.content


def test_an_honest_answer_has_no_findings():
    extracted = check_answer(fenced(SEED), get_spec("rms_norm"))
    assert extracted.ok and extracted.findings == () and extracted.source == SEED
    with pytest.raises(ValueError):
        corrective_message(extracted)


def test_corrective_message_for_an_extraction_error_quotes_it_from_the_template():
    with pytest.raises(ExtractionError) as err:
        extract_source("no code here")
    message = corrective_message(err.value)
    assert message.role is Role.USER
    assert str(err.value) in message.content
    assert "EVOLVE-BLOCK" in message.content  # template text, not Python
    assert not re.search(r"\$[A-Za-z_{]", message.content)
