"""Kernel requests from GitHub issue bodies: the form, the parser, validation, rendering back, the
`kforge issue parse` command and `kforge misses --to-issue`.

Fixture bodies under tests/issues/ are written as GitHub renders the Kernel request form.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kforge.cli.main import main
from kforge.issues import form
from kforge.issues.form import Goal, TargetGpu
from kforge.issues.from_misses import gpu_of
from kforge.issues.parse import MAX_BODY_CHARS, parse_body, parse_request
from kforge.issues.render import TITLE_PREFIX, render_body
from kforge.issues.request import (KernelRequest, RequestError, problems_markdown, reference_problems,
                                   validate)
from kforge.records import DispatchKey
from kforge.router import misses

HERE = Path(__file__).parent
BODIES = HERE / "issues"
TEMPLATE = HERE.parent / ".github" / "ISSUE_TEMPLATE" / "kernel-request.yml"
H100 = "cuda|NVIDIA H100 80GB HBM3|sm90|torch2.13|triton3.5"
H200 = "cuda|NVIDIA H200|sm90|torch2.13|triton3.5"
CPU = "cpu|AMD EPYC 7B13|x86_64|torch2.13|tritonnone"

SCALED_RELU = '''import torch


def reference(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.relu(x) * scale


def make_inputs(shape, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g).to(device=device, dtype=dtype), 0.5)'''
EXISTING = KernelRequest(version=1, op="rms_norm", new_op=False, reference=None, shapes=((4096, 4096), (1, 8192)),
                         dtypes=("bfloat16",), gpu=TargetGpu.A100, goal=Goal.LATENCY, tolerance=None, notes="")


def body(name: str) -> str:
    return (BODIES / name).read_text()


def with_field(text: str, label: str, value: str) -> str:
    """`text` (a body as rendered) with the value of `### label` replaced by `value`."""
    sections = text.split("\n\n### ")
    for i, section in enumerate(sections):
        head = section.removeprefix("### ").split("\n", 1)[0]
        if head == label:
            sections[i] = ("### " if i == 0 else "") + f"{label}\n\n{value}"
            return "\n\n### ".join(sections)
    raise AssertionError(f"no section {label}")


def errors(problems) -> list[tuple[str, str]]:
    return [(p.field, p.message) for p in problems if p.severity == "error"]


# -- the form ------------------------------------------------------------------------------------
def test_the_issue_template_is_the_form_the_parser_reads():
    yaml = pytest.importorskip("yaml")
    template = yaml.safe_load(TEMPLATE.read_text())
    assert template["labels"] == [form.LABEL]
    assert template["title"] == TITLE_PREFIX
    fields = [f for f in template["body"] if f["type"] != "markdown"]
    assert [(f["id"], f["attributes"]["label"], f["type"]) for f in fields] == \
        [(f.id, f.label, f.kind.value) for f in form.FIELDS]
    for field, spec in zip(fields, form.FIELDS):
        options = field["attributes"].get("options", [])
        assert [o["label"] if isinstance(o, dict) else str(o) for o in options] == list(spec.options), spec.id
        assert field["attributes"].get("render") == spec.render, spec.id
        assert field.get("validations", {}).get("required", False) == (spec.id in form.REQUIRED and
                                                                       spec.kind is not form.Kind.CHECKBOXES), spec.id


# -- complete bodies -----------------------------------------------------------------------------
def test_a_complete_new_op_body_with_a_function_reference():
    request, problems = parse_request(body("new_op_function.md"))
    assert problems == []
    assert request == KernelRequest(
        version=1, op="scaled_relu", new_op=True, reference=SCALED_RELU,
        shapes=((4096, 4096), (1, 8192), (33, 4097)), dtypes=("bfloat16", "float16"), gpu=TargetGpu.H100,
        goal=Goal.THROUGHPUT, tolerance=2.0,
        notes="Used in our MLP after the up-projection; vendor takes 41 us at 4096x4096 on H100.")


def test_headings_and_fences_inside_the_reference_code_are_code():
    """A KernelBench-style reference whose Python comments read `### Op` / `### Shapes` and whose
    docstring holds a ``` block: all of it is the reference; an unknown section is a warning."""
    request, problems = parse_request(body("new_op_kernelbench.md"))
    assert request is not None, problems
    assert [(p.severity, p.field) for p in problems] == [("warning", "body")]
    assert "Additional context" in problems[0].message
    assert (request.op, request.shapes, request.dtypes, request.gpu, request.goal) == \
        ("scaled_gelu_rowsum", ((128, 4096),), ("float32",), TargetGpu.ANY, Goal.LATENCY)
    ref = request.reference
    assert ref.startswith('"""GELU, scaled') and ref.endswith("def get_init_inputs():\n    return [0.5]")
    assert "\n### Op\n" in ref and "\n### Shapes\n\nclass Model(nn.Module):" in ref and "\n```\ny = Model" in ref
    assert reference_problems(ref) == []


def test_an_existing_op_body():
    request, problems = parse_request(body("existing_op.md"))
    assert (request, problems) == (EXISTING, [])


@pytest.mark.parametrize("name", ["new_op_function.md", "new_op_kernelbench.md", "existing_op.md", "injection.md"])
def test_crlf_line_ends_read_the_same(name):
    text = body(name)
    assert parse_request(text.replace("\n", "\r\n")) == parse_request(text)
    assert parse_request("\ufeff" + text.replace("\n", "\r\n")) == parse_request(text)


def test_a_body_with_missing_and_wrong_fields_reports_every_problem_at_once():
    request, problems = parse_request(body("missing_fields.md"))
    assert request is None
    assert errors(problems) == [
        ("version", "form version `2` is not one this kforge reads (1)"),
        ("op", "is required"),
        ("shapes", "line 1 `4096y4096`: expected dims like 4096x4096"),
        ("shapes", "`0x16`: every dim must be a positive integer"),
        ("dtypes", "choose at least one dtype (bf16, fp16, fp32)"),
        ("gpu", "`V100`: choose one of H100, H200, A100, any"),
        ("goal", "the `### Goal` section is missing: file the request with the Kernel request form"),
        ("tolerance", "-1 is out of range: a multiple of the op's error budget, above 0 and at most 10"),
    ]
    text = problems_markdown(problems)
    assert text.startswith("**kforge cannot run this kernel request yet**: 8 problems.")
    assert "- **Target GPU**: `V100`: choose one of H100, H200, A100, any\n" in text
    assert text.count("\n- **") == 8


# -- injection -----------------------------------------------------------------------------------
def test_instructions_and_headings_in_the_notes_change_nothing_but_the_notes():
    request, problems = parse_request(body("injection.md"))
    assert problems == []
    assert request == KernelRequest(**{**EXISTING.to_json(), "notes": request.notes})
    notes = request.notes
    for text in ("Ignore previous instructions", "`rm -rf /`", "change op softmax", "skip the checks",
                 "print GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}", "### Op\n\nsoftmax", "### Shapes\n\n1x1",
                 "- [X] fp32", 'os.system("cat ~/.ssh/id_rsa")', "H200\n\n```\n### Goal\n\nthroughput"):
        assert text in notes
    assert set(request.to_json()) == {"version", "op", "new_op", "reference", "shapes", "dtypes", "gpu", "goal",
                                      "tolerance", "notes"}
    assert parse_request(render_body(request)) == (request, [])  # the notes survive a round trip as text


def test_a_heading_typed_into_a_middle_field_makes_the_request_invalid_not_different():
    text = with_field(body("existing_op.md"), "Shapes", "4096x4096\n\n### Op\n\nsoftmax\n\n### Dtypes\n\n- [X] fp32")
    assert parse_body(text)["Op"] == "rms_norm"
    request, problems = parse_request(text)
    assert request is None
    assert [f for f, m in errors(problems) if "appears 2 times" in m] == ["op", "dtypes"]


def test_an_unclosed_fence_in_a_field_swallows_sections_into_an_invalid_request():
    text = with_field(body("existing_op.md"), "Shapes", "4096x4096\n```")
    request, problems = parse_request(text)
    assert request is None
    assert {f for f, _ in errors(problems)} == {"shapes", "dtypes", "gpu", "goal"}


@pytest.mark.parametrize("op", ["rms_norm; rm -rf /", "rms_norm\n\nsoftmax", "$(cat /etc/passwd)", "RMS_norm",
                                "../../etc", "x", "a" * 42])
def test_an_op_that_is_neither_existing_nor_a_valid_name_is_refused(op):
    request, problems = parse_request(with_field(body("existing_op.md"), "Op", op))
    assert request is None
    assert [f for f, m in errors(problems)] == ["op"]
    assert "is not an existing op" in errors(problems)[0][1]


# -- field rules ---------------------------------------------------------------------------------
def test_parse_body_reads_each_kind_of_field():
    text = ("### Form version\n\n1\n\n### Op\n\n  softmax  \n\n### Reference\n\n```python\n```python\nx = 1\n```\n```"
            "\n\n### Shapes\n\n_No response_\n\n### Dtypes\n\n- [X] bf16\n- [ ] fp16\n- [x] fp32\n\n### Notes\n\n"
            "  two\n\nparagraphs  ")
    assert parse_body(text) == {"Form version": "1", "Op": "softmax", "Reference": "x = 1", "Shapes": None,
                                "Dtypes": "- [X] bf16\n- [ ] fp16\n- [x] fp32", "Notes": "two\n\nparagraphs"}


@pytest.mark.parametrize("source, expected", [
    (SCALED_RELU, []),
    ("class Model:\n    def forward(self, x): return x\ndef get_inputs(): return []\ndef get_init_inputs(): return []",
     []),
    ("def reference(x):\n    return x +\n", ["the reference does not parse as Python: line 2: invalid syntax"]),
    ("def reference(x): return x", ["the reference defines no top-level function `make_inputs`"]),
    ("def reference(x): return x\ndef make_inputs(shape, dtype): pass",
     ["the reference `make_inputs` must take (shape, dtype, device, seed)"]),
    ("class Model:\n    pass\ndef get_inputs(n): return []",
     ["the reference defines no top-level function `get_init_inputs`", "the reference `Model` defines no `forward`",
      "the reference `get_inputs` must take no arguments"]),
    ("import torch\nprint(torch.ones(3))", ["the reference defines neither `reference` + `make_inputs(shape, dtype, "
                                            "device, seed)` nor a KernelBench-style `class Model` (with `forward`) + "
                                            "`get_inputs()` + `get_init_inputs()` at its top level"]),
    (SCALED_RELU + "\n" + "# padding\n" * 2000, ["the reference is 20281 bytes; at most 20000"]),
])
def test_reference_rules(source, expected):
    fields = {"version": "1", "op": "scaled_relu", "reference": source, "shapes": "8x8", "dtypes": "fp32",
              "gpu": "any", "goal": "latency"}
    from kforge.issues.request import from_fields

    request, problems = from_fields(fields)
    assert [m for f, m in errors(problems)] == expected
    assert (request is None) == bool(expected)


def test_a_reference_is_read_never_run(tmp_path):
    marker = tmp_path / "ran"
    source = f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit(3)\n" + SCALED_RELU
    text = with_field(body("new_op_function.md"), "Reference", f"```python\n{source}\n```")
    request, problems = parse_request(text)
    assert problems == [] and request.reference == source
    assert not marker.exists()


@pytest.mark.parametrize("op, reference, expected", [
    ("rms_norm", SCALED_RELU, ("reference", "`rms_norm` is an existing op: leave the reference empty, or give the "
                                            "new op a name of its own")),
    ("scaled_relu", None, ("reference", "`scaled_relu` is a new op: its PyTorch reference is required")),
    ("spec", SCALED_RELU, ("op", "`spec` is a reserved name; choose another name for the new op")),
    ("lambda", SCALED_RELU, ("op", "`lambda` is a reserved name; choose another name for the new op")),
])
def test_op_and_reference_go_together(op, reference, expected):
    text = with_field(with_field(body("new_op_function.md"), "Op", op), "Reference",
                      f"```python\n{reference}\n```" if reference else "_No response_")
    request, problems = parse_request(text)
    assert request is None and errors(problems) == [expected]


def test_a_user_op_persisted_here_is_an_existing_op(kforge_home):
    (kforge_home / "ops" / "scaled_relu").mkdir(parents=True)
    (kforge_home / "ops" / "scaled_relu" / "definition.json").write_text("{}")
    text = with_field(body("new_op_function.md"), "Reference", "_No response_")
    request, problems = parse_request(text)
    assert problems == [] and (request.op, request.new_op, request.reference) == ("scaled_relu", False, None)


@pytest.mark.parametrize("shapes, expected", [
    ("(2, 3, 128)\n- 4 x 4\n[4,4]\n\n* 1×8\n2x1073741824", ((2, 3, 128), (4, 4), (1, 8), (2, 1073741824))),
    ("2x1073741825", "`2x1073741825` has 2147483650 elements; at most 2**31"),
    ("1x2x3x4x5x6x7x8x9", "`1x2x3x4x5x6x7x8x9` has 9 dims; 1 to 8"),
    ("\n".join(f"{n}x64" for n in range(1, 34)), "33 shapes; at most 32"),
    ("4096x-1", "line 1 `4096x-1`: expected dims like 4096x4096"),
    ("4096x4096 # big", "line 1 `4096x4096 # big`: expected dims like 4096x4096"),
])
def test_shape_rules(shapes, expected):
    request, problems = parse_request(with_field(body("existing_op.md"), "Shapes", shapes))
    if isinstance(expected, tuple):
        assert problems == [] and request.shapes == expected
    else:
        assert request is None and errors(problems) == [("shapes", expected)]


@pytest.mark.parametrize("text, expected", [("10", 10.0), ("0.25", 0.25), ("1e-1", 0.1), ("0", None), ("-1", None),
                                            ("11", None), ("nan", None), ("inf", None), ("2x", None)])
def test_tolerance_rules(text, expected):
    request, problems = parse_request(with_field(body("existing_op.md"), "Tolerance", text))
    if expected is None:
        assert request is None and [f for f, _ in errors(problems)] == ["tolerance"]
    else:
        assert problems == [] and request.tolerance == expected


@pytest.mark.parametrize("text, expected", [
    ("bf16, fp32", ("bfloat16", "float32")), ("float32 half bfloat16", ("bfloat16", "float16", "float32")),
    ("- [ ] bf16\n- [X] fp32\n- [x] fp16", ("float16", "float32")),
    ("fp64", "`fp64`: use bf16, fp16, fp32"), ("- [X] int8", "`int8`: use bf16, fp16, fp32"),
])
def test_dtype_rules(text, expected):
    request, problems = parse_request(with_field(body("existing_op.md"), "Dtypes", text))
    if isinstance(expected, tuple):
        assert problems == [] and request.dtypes == expected
    else:
        assert request is None and errors(problems) == [("dtypes", expected)]


def test_problems_show_untrusted_text_only_inside_code_spans():
    op = "@everyone <img src=x onerror=alert(1)> `code` [link](https://evil.example) and some more text"
    _, problems = parse_request(with_field(body("existing_op.md"), "Op", op))
    line = problems_markdown(problems).splitlines()[2]
    assert line.startswith("- **Op**: `@everyone <img src=x onerror=alert(1)> '...` is not an existing op")
    assert line.count("`") == 2  # one code span: the op's text, its own backticks replaced
    assert "https://evil.example" not in line  # cut at 40 characters


def test_a_body_larger_than_github_allows_is_refused_whole():
    request, problems = parse_request(body("existing_op.md") + "x" * MAX_BODY_CHARS)
    assert request is None and [p.field for p in problems] == ["body"]


# -- JSON and rendering ----------------------------------------------------------------------------
def test_json_round_trip_and_validation_of_a_typed_request():
    request, _ = parse_request(body("new_op_function.md"))
    again = KernelRequest.from_json(json.loads(json.dumps(request.to_json())))
    assert again == request and validate(again) == []
    with pytest.raises(RequestError, match="keys"):
        KernelRequest.from_json({**request.to_json(), "shell": "rm -rf /"})
    with pytest.raises(RequestError, match="not a kernel request"):
        KernelRequest.from_json({**request.to_json(), "gpu": "V100"})
    wrong = KernelRequest(**{**request.to_json(), "new_op": False, "shapes": [[0, 4]], "tolerance": 20})
    assert [p.field for p in validate(wrong)] == ["op", "shapes", "tolerance"]


@pytest.mark.parametrize("request_", [
    EXISTING,
    KernelRequest(1, "scaled_relu", True, SCALED_RELU, ((8, 8), (1, 2, 3, 4, 5, 6, 7, 8)),
                  ("float32", "bfloat16", "float16"), "H200", "throughput", 0.5,
                  "## a heading\n\n```\n### Op\n\nsoftmax\n```\n\n- [X] fp32\n_No response_ at the end? no"),
    KernelRequest(1, "softmax", False, None, ((3, 100),), ("float16",), "any", "latency", 1e-3, ""),
], ids=["existing", "new", "tolerance"])
def test_render_then_parse_gives_the_same_request(request_):
    text = render_body(request_)
    assert parse_request(text) == (request_, [])
    assert text.startswith("### Form version\n\n1\n\n### Op\n\n") and not text.endswith("\n")


def test_rendering_a_parsed_fixture_gives_the_fixture_back():
    for name in ("new_op_function.md", "existing_op.md"):
        request, _ = parse_request(body(name))
        assert render_body(request) == body(name).strip().replace("\n  33x4097  ", "\n33x4097")


# -- the CLI -------------------------------------------------------------------------------------
def run_main(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_issue_parse_command(capsys):
    rc, out, _ = run_main(capsys, "issue", "parse", "--body-file", str(BODIES / "existing_op.md"))
    assert rc == 0 and "rms_norm (existing)" in out and "4096x4096, 1x8192" in out
    for argv in (("issue", "parse", "--json", "--body-file"), ("issue", "--json", "parse", "--body-file")):
        rc, out, _ = run_main(capsys, *argv, str(BODIES / "new_op_function.md"))
        result = json.loads(out)
        assert rc == 0 and result["valid"] and result["problems"] == []
        assert KernelRequest.from_json(result["request"]) == parse_request(body("new_op_function.md"))[0]

    rc, out, _ = run_main(capsys, "issue", "parse", "--body-file", str(BODIES / "missing_fields.md"))
    from kforge.issues.approval import body_hash

    digest = body_hash(body("missing_fields.md"))
    assert rc == 1 and out == problems_markdown(parse_request(body("missing_fields.md"))[1]) + \
        f"\nBody `{digest}` (sha256 prefix).\n"
    rc, out, _ = run_main(capsys, "issue", "parse", "--json", "--body-file", str(BODIES / "missing_fields.md"))
    result = json.loads(out)
    assert rc == 1 and not result["valid"] and result["request"] is None and len(result["problems"]) == 8

    rc, _, err = run_main(capsys, "issue", "parse", "--body-file", str(BODIES / "nope.md"))
    assert rc == 1 and "cannot read --body-file" in err


# -- kforge misses --to-issue ----------------------------------------------------------------------
def log(*entries):
    misses.merge({DispatchKey(op, device, dtypes, shape): (calls, 0) for op, device, dtypes, shape, calls in entries})


def test_misses_to_issue_files_the_most_missed_op(capsys):
    log(("rms_norm", H100, "bfloat16,bfloat16", (8, 4096), 20), ("rms_norm", H100, "float16,float16", (1, 8192), 10),
        ("softmax", H100, "bfloat16", (4, 128), 15), ("softmax", H100, "float64", (4, 64), 1000),
        ("rms_norm", H100, "bfloat16,bfloat16", (1, 8192), 5))
    rc, out, _ = run_main(capsys, "misses", "--to-issue", "--json")
    result = json.loads(out)
    expected = KernelRequest(1, "rms_norm", False, None, ((8, 4096), (1, 8192)), ("bfloat16", "float16"), "H100",
                             "latency", None, result["request"]["notes"])
    assert rc == 0 and KernelRequest.from_json(result["request"]) == expected and result["problems"] == []
    assert parse_request(result["body"]) == (expected, [])
    assert result["title"] == "Kernel request: rms_norm (2 shapes, bfloat16, float16, H100)"
    assert "35 calls of `rms_norm`" in expected.notes and "| 1x8192 | float16,float16 | 10 |" in expected.notes

    rc, out, err = run_main(capsys, "misses", "--to-issue", "--op", "softmax")
    request, problems = parse_request(out)
    assert rc == 0 and problems == [] and "title: Kernel request: softmax" in err
    assert (request.op, request.shapes, request.dtypes) == ("softmax", ((4, 128),), ("bfloat16",))  # fp64 left out

    rc, out, _ = run_main(capsys, "misses", "--to-issue", "--limit", "1", "--json")
    assert (json.loads(out)["request"]["shapes"], json.loads(out)["request"]["dtypes"]) == ([[8, 4096]], ["bfloat16"])


def test_misses_to_issue_takes_shapes_as_generate_does_and_the_gpu_the_devices_agree_on(capsys):
    log(("gemv", H100, "bfloat16,bfloat16", (4, 32, 16), 3), ("gemv", H200, "bfloat16,bfloat16", (2, 64, 8), 2))
    rc, out, _ = run_main(capsys, "misses", "--to-issue", "--json")
    request = json.loads(out)["request"]
    assert rc == 0 and request["shapes"] == [[4, 16, 32], [2, 8, 64]] and request["gpu"] == "any"  # (m, k, n)


def test_misses_to_issue_with_nothing_logged_or_an_unknown_op(capsys):
    rc, _, err = run_main(capsys, "misses", "--to-issue")
    assert rc == 1 and "nothing to request" in err
    log(("my_op", CPU, "float32", (8, 8), 4))
    rc, out, _ = run_main(capsys, "misses", "--to-issue", "--json")
    result = json.loads(out)
    assert rc == 0 and result["request"]["new_op"] and result["request"]["gpu"] == "any"
    assert [p["field"] for p in result["problems"]] == ["reference"]  # add the op's reference before filing


@pytest.mark.parametrize("device, gpu", [(H100, "H100"), (H200, "H200"), (CPU, "any"),
                                         ("cuda|NVIDIA A100-SXM4-80GB|sm80|torch2.13|triton3.5", "A100"),
                                         ("cuda|NVIDIA GH200 480GB|sm90|torch2.13|triton3.5", "any"),
                                         ("not a fingerprint H100", "any")])
def test_gpu_of_a_device(device, gpu):
    assert gpu_of(device) == TargetGpu(gpu)


def test_misses_to_issue_of_a_persisted_user_op_carries_its_definition(capsys):
    """The machine that answers the request has never seen the op: the request is a new op whose
    reference is the op's persisted definition, `reference`/`make_inputs` under those names even
    where the user's functions have others, and it is valid there (and here, as it will be seen)."""
    import user_op_defs

    import kforge

    name = "amax_and_flat"
    kforge.define_op(name, "(Tensor x) -> (Tensor, Tensor)", user_op_defs.two_outputs, user_op_defs.one_input,
                     shapes=[(4, 8)], dtypes=[torch.float32])
    log((name, CPU, "float32", (4, 8), 7))
    rc, out, _ = run_main(capsys, "misses", "--to-issue", "--json")
    result = json.loads(out)
    request = result["request"]
    assert rc == 0 and request["op"] == name and request["new_op"] and result["problems"] == []
    assert "def two_outputs" in request["reference"] and "def reference(*args)" in request["reference"]
    assert "return one_input(shape, dtype, device, seed)" in request["reference"]
    from kforge.ops import SPECS, is_builtin

    parsed, problems = parse_request(result["body"], known=[n for n in SPECS if is_builtin(n)])  # as the answering
    # machine reads it: the built-in ops exist there, this one does not
    assert problems == [] and parsed.new_op and parsed.reference.rstrip() == request["reference"].rstrip()
    namespace: dict = {}
    exec(compile(parsed.reference, "<request>", "exec"), namespace)  # the reference defines the same op
    x = torch.randn(4, 8)
    for got, want in zip(namespace["reference"](x), user_op_defs.two_outputs(x)):
        assert torch.equal(got, want)
    assert namespace["make_inputs"]((4, 8), torch.float32, "cpu", 3)[0].shape == (4, 8)
