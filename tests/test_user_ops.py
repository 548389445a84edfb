"""User-defined ops: kforge.define_op, @kforge.op and KernelBench-style files: registered, routed,
logged and compiled like built-ins, persisted so another process loads them by name."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import fake_openai, unique_op_name as fresh

import kforge
import user_op_defs
from kforge.userops import define, kernelbench, persist
from kforge.userops.build import UserOpError

HERE = Path(__file__).resolve().parent
KERNELBENCH = HERE / "kernelbench" / "scaled_gelu_rowsum.py"


def run_elsewhere(code: str, home: Path) -> str:
    env = {**os.environ, "KFORGE_HOME": str(home), "KFORGE_BUNDLED_TABLE": "none"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_a_defined_op_is_called_routed_and_logged_like_a_builtin():
    name = fresh("scaled_relu")
    entry = kforge.define_op(name, "(Tensor x, float scale) -> Tensor", user_op_defs.reference,
                             user_op_defs.make_inputs, shapes=[(8, 32)])
    x = torch.randn(8, 32)
    want = torch.relu(x) * 0.25
    torch.testing.assert_close(entry(x, 0.25), want)
    torch.testing.assert_close(getattr(kforge.ops, name)(x, scale=0.25), want)
    torch.testing.assert_close(getattr(torch.ops.kforge, name)(x, 0.25), want)
    stats = kforge.stats()["ops"][name]
    assert (stats["calls"], stats["miss"], stats["by_impl"]) == (3, 3, {"vendor": 3})
    kforge.flush()
    from kforge.router import misses

    assert [(e["op"], tuple(e["shape"])) for e in misses.read_all()] == [(name, (8, 32))]


def test_a_defined_op_compiles_fullgraph_and_checks_its_arguments():
    name = fresh("scaled_relu")
    entry = kforge.define_op(name, "(Tensor x, float scale) -> Tensor", user_op_defs.reference,
                             user_op_defs.make_inputs, shapes=[(8, 32)], persist=False)
    op = getattr(torch.ops.kforge, name)
    compiled = torch.compile(lambda x: op(x, 2.0) + 1, backend="aot_eager", fullgraph=True)
    x = torch.randn(4, 32)
    torch.testing.assert_close(compiled(x), torch.relu(x) * 2 + 1)
    with pytest.raises(kforge.KforgeInputError, match=rf"kforge.{name}: argument 'x' has dtype torch.int64"):
        entry(torch.ones(4, 32, dtype=torch.int64), 1.0)
    with pytest.raises(kforge.KforgeInputError, match="argument 'x' has dtype torch.float64"):
        entry(torch.ones(4, 32, dtype=torch.float64), 1.0)


def test_outputs_are_new_tensors_even_when_the_reference_returns_a_view():
    name = fresh("amax_flat")
    entry = kforge.define_op(name, "(Tensor x) -> (Tensor, Tensor)", user_op_defs.two_outputs,
                             user_op_defs.one_input, shapes=[(4, 8)], dtypes=[torch.float32])
    x = torch.randn(4, 8)
    fake = torch.library.opcheck(getattr(torch.ops.kforge, name).default, (x,),
                                 test_utils=("test_schema", "test_faketensor"))
    assert set(fake.values()) == {"SUCCESS"}
    amax, flat = entry(x)
    torch.testing.assert_close(amax, x.amax(-1))
    torch.testing.assert_close(flat, x.view(-1))


def test_the_decorator_form_names_the_op_after_the_function():
    name = fresh("halved")

    def make_inputs(shape, dtype, device, seed):
        return (torch.full(shape, 3.0, dtype=dtype, device=device),)

    @kforge.op("(Tensor x) -> Tensor", make_inputs, shapes=[(2, 2)], name=name, persist=False)
    def halved(x):
        return x / 2

    torch.testing.assert_close(halved(torch.full((2, 2), 3.0)), torch.full((2, 2), 1.5))
    assert kforge.ops.get_spec(name).reference is not halved  # the entry point, not the function
    assert kforge.ops.get_spec(name).description == f"user-defined op {name}"


def test_a_persisted_op_is_loaded_by_name_in_another_process(kforge_home):
    name = fresh("scaled_relu")
    kforge.define_op(name, "(Tensor x, float scale) -> Tensor", user_op_defs.reference, user_op_defs.make_inputs,
                     shapes=[(8, 32)], description="relu, scaled")
    manifest = json.loads((kforge_home / "ops" / name / "definition.json").read_text())
    assert manifest["reference"] == "reference" and manifest["shapes"] == [[8, 32]]
    out = run_elsewhere(
        "import torch, kforge\n"
        f"x = torch.arange(-3.0, 3.0)\n"
        f"print(kforge.ops.{name}(x, 2.0).tolist(), kforge.ops.get_spec('{name}').description)\n", kforge_home)
    assert out.strip() == "[0.0, 0.0, 0.0, 0.0, 2.0, 4.0] relu, scaled"


def test_which_persisted_code_runs_is_the_callers_trust(kforge_home):
    """No process-wide flag: an issue runner passes Trust.NO_CODE and a trusted op's file is refused
    without running; Trust.SANDBOX is refused outside a sandboxed worker; the default, this
    process's own trust, runs the user's op."""
    name = fresh("scaled_relu")
    kforge.define_op(name, "(Tensor x, float scale) -> Tensor", user_op_defs.reference, user_op_defs.make_inputs,
                     shapes=[(8, 32)], description="relu, scaled")
    out = run_elsewhere(
        "import sys, kforge\n"
        "from kforge.userops import load\n"
        "from kforge.userops.build import UntrustedCodeError, UserOpError\n"
        "from kforge.userops.untrusted import Trust\n"
        "for trust, error in ((Trust.NO_CODE, UserOpError), (Trust.SANDBOX, UntrustedCodeError)):\n"
        "    try:\n"
        f"        load.load('{name}', trust)\n"
        "    except error as exc:\n"
        "        print(trust.name, 'refused:', exc)\n"
        f"print('ran' if 'kforge_user_ops.{name}' in sys.modules else 'did not run')\n"
        f"print(kforge.ops.get_spec('{name}').description)\n", kforge_home)
    lines = out.strip().splitlines()
    assert lines[0].startswith("NO_CODE refused:") and "runs no user-op code" in lines[0], lines
    assert lines[1].startswith("SANDBOX refused:"), lines
    assert lines[2:] == ["did not run", "relu, scaled"], lines


@pytest.mark.parametrize("args, message", [
    (("Bad-Name", "(Tensor x) -> Tensor"), "lowercase letters"),
    (("rms_norm", "(Tensor x) -> Tensor"), "already registered (a built-in op)"),
    (("{name}", "(Tensor x) -> int"), "must return Tensor"),
    (("{name}", "(Tensor(a!) x) -> Tensor"), "functional"),
    (("{name}", "(Tensor x ->"), "does not parse"),
    (("{name}", "other(Tensor x) -> Tensor"), "the schema names 'other'"),
])
def test_bad_definitions_are_refused_with_the_reason(args, message):
    name = fresh("bad")
    op_name, schema = args[0].format(name=name), args[1]
    with pytest.raises(UserOpError, match=message.replace("(", r"\(").replace(")", r"\)")):
        kforge.define_op(op_name, schema, user_op_defs.reference, user_op_defs.make_inputs, shapes=[(4, 4)])
    assert op_name not in kforge.ops.SPECS or op_name == "rms_norm"


def test_a_function_without_a_file_cannot_be_persisted_and_says_so(kforge_home):
    name = fresh("lambda_op")
    with pytest.raises(UserOpError, match="module-level function of a .py file"):
        kforge.define_op(name, "(Tensor x) -> Tensor", lambda x: x * 2, user_op_defs.one_input, shapes=[(4,)])
    assert name not in kforge.ops.SPECS and not (kforge_home / "ops" / name).exists()


def test_a_kernelbench_file_defines_an_op(kforge_home):
    name = fresh("gelu_rowsum")
    entry = kernelbench.from_kernelbench(KERNELBENCH, name)
    spec = kforge.ops.get_spec(name)
    assert spec.schema == f"{name}(Tensor in0) -> Tensor" and not spec.fixed_shapes  # batch_size may vary
    assert spec.exact_dims == ("d1",)  # in_features sizes the weight
    assert spec.shape_sets["smoke"] == ((8, 32),) and "class Model" in spec.reference_source
    torch.manual_seed(0)
    import importlib.util

    module_spec = importlib.util.spec_from_file_location("kb_check", KERNELBENCH)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.Model(*module.get_init_inputs())
    (x,) = spec.make_inputs((8, 32), torch.float32, "cpu", 3)
    with torch.no_grad():
        torch.testing.assert_close(entry(x), model(x))
        (xb,) = spec.make_inputs((8, 32), torch.bfloat16, "cpu", 3)  # the parameters follow the input's dtype
        torch.testing.assert_close(entry(xb).float(), model(xb.float()), rtol=0.05, atol=0.05)
    out = run_elsewhere(
        "import torch, kforge\n"
        f"spec = kforge.ops.get_spec('{name}')\n"
        f"(x,) = spec.make_inputs((8, 32), torch.float32, 'cpu', 3)\n"
        f"print(round(float(kforge.ops.{name}(x).sum()), 4))\n", kforge_home)
    with torch.no_grad():
        assert float(out) == pytest.approx(round(float(model(x).sum()), 4), abs=1e-3)


def test_kernelbench_files_are_checked_without_running_them(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nos.system('touch pwned')\nclass Model: pass\n")
    assert kernelbench.kernelbench_problems(bad.read_text()) == ["defines no get_inputs", "defines no get_init_inputs"]
    with pytest.raises(UserOpError, match="not a KernelBench-style file"):
        kernelbench.from_kernelbench(bad, fresh("bad"))
    assert not (Path.cwd() / "pwned").exists()


def test_a_user_op_is_generated_through_a_fake_llm_verified_in_workers_and_served(kforge_home, httpserver,
                                                                                   monkeypatch):
    """The whole loop for an op kforge did not ship: define (persisted), a real OpenAI client
    against a loopback server answering a Triton kernel, verification in sandboxed workers (which
    load the op by name from KFORGE_HOME), the record written, the next call served by it."""
    from kforge.evaluate.executors import LocalPoolExecutor
    from kforge.gen import search
    from kforge.gen.archive import Archive
    from kforge.gen.run_state import Settings

    name = fresh("scaled_relu")
    kforge.define_op(name, "(Tensor x, float scale) -> Tensor", user_op_defs.reference, user_op_defs.make_inputs,
                     shapes=[(4, 64)], dtypes=[torch.float32])
    kernel = (HERE / "candidates" / "scaled_relu_triton.py").read_text()
    provider = fake_openai(httpserver, monkeypatch, f"```python\n{kernel}```")
    with LocalPoolExecutor([], workers=2) as pool:
        result = search.run(name, provider, Settings(rounds=1, variants=1, timeout_s=300.0), device="cpu",
                            dtypes=[torch.float32], shapes=[(4, 64)], executor=pool)
    (attempt,) = Archive().query(run_id=result.run_id)
    assert attempt.accepted, attempt.verdict
    prompt = json.loads(httpserver.log[0][0].get_data())["messages"][-1]["content"]
    assert "torch.relu(x) * scale" in prompt  # the user's reference is what the model was shown
    from helpers import cpu_device
    from kforge.router.table import ScoreTable

    kforge.reset()
    (record,) = [r for r in ScoreTable().records(cpu_device(), name) if r.backend == "triton"]
    x = torch.randn(4, 64)
    with kforge.use(name, record.impl):  # on a CPU the interpreter loses to vendor: pin the kernel
        torch.testing.assert_close(getattr(kforge.ops, name)(x, 0.5), torch.relu(x) * 0.5)
    assert kforge.stats()["ops"][name]["by_impl"] == {record.impl: 1}


def test_a_file_that_defines_its_ops_at_top_level_loads_them_once_elsewhere(kforge_home, monkeypatch):
    name = fresh("tripled")
    monkeypatch.setenv("KFORGE_TEST_OP", name)
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"self_defining_{name}", HERE / "user_op_files" / "self_defining.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert set(persist.persisted()) >= {name, name + "_neg"}
    out = run_elsewhere(
        "import torch, kforge\n"
        f"print(kforge.ops.{name}(torch.ones(2)).tolist(), kforge.ops.{name}_neg(torch.ones(2)).tolist())\n",
        kforge_home)
    assert out.strip() == "[3.0, 3.0] [-1.0, -1.0]"


def test_a_persisted_name_is_not_overwritten_unless_asked(kforge_home):
    name = fresh("scaled_relu")
    kforge.define_op(name, "(Tensor x, float scale) -> Tensor", user_op_defs.reference, user_op_defs.make_inputs,
                     shapes=[(8, 32)])
    before = (kforge_home / "ops" / name / "definition.json").read_text()
    import kforge.ops as ops_module

    ops_module.SPECS.pop(name)  # as another process would see it: persisted, not registered here
    try:
        with pytest.raises(UserOpError, match="already persisted"):
            define.define_op(name, "(Tensor x) -> Tensor", user_op_defs.two_outputs, user_op_defs.one_input,
                             shapes=[(4, 8)])
        assert (kforge_home / "ops" / name / "definition.json").read_text() == before
    finally:
        ops_module.SPECS[name] = ops_module.ENTRIES[name].spec


@pytest.mark.parametrize("name", ["get_spec", "register", "user", "registry", "library", "entry"])
def test_names_of_the_ops_namespace_are_reserved(name):
    with pytest.raises(UserOpError, match="reserved"):
        kforge.define_op(name, "(Tensor x) -> Tensor", user_op_defs.two_outputs, user_op_defs.one_input,
                         shapes=[(4, 8)], persist=False)
    assert callable(kforge.ops.get_spec) and kforge.ops.get_spec("rms_norm").name == "rms_norm"


def test_a_kernelbench_file_that_fails_names_the_op_and_the_step(tmp_path):
    bad = tmp_path / "needs_k.py"
    bad.write_text("import torch\nclass Model(torch.nn.Module):\n    def __init__(self, k):\n        super().__init__()\n"
                   "    def forward(self, x):\n        return x\n"
                   "def get_inputs():\n    return [torch.ones(2)]\ndef get_init_inputs():\n    return []\n")
    name = fresh("needs_k")
    with pytest.raises(UserOpError, match=rf"op '{name}': Model\(\*get_init_inputs\(\)\) failed: TypeError"):
        kernelbench.from_kernelbench(bad, name)
    numbered = tmp_path / "1_Square_matmul_.py"
    numbered.write_text(KERNELBENCH.read_text())
    with pytest.raises(UserOpError, match="name the op: kforge generate NAME --spec-file"):
        kernelbench.from_kernelbench(numbered)
