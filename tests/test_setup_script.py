"""scripts/setup.sh's choice of torch (`--print-torch` prints the pip arguments and installs nothing):
a CUDA build where nvidia-smi lists a GPU, the pinned CPU build elsewhere, KFORGE_TORCH split into
pip arguments so that it can name an index; and the install itself, run against a fake venv whose
pip records what it was asked to install."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def print_torch(tmp_path: Path, nvidia_smi: str | None, **env: str) -> subprocess.CompletedProcess:
    """Run `setup.sh --print-torch` with a fake nvidia-smi (a shell body) first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if nvidia_smi is not None:
        fake = bin_dir / "nvidia-smi"
        fake.write_text("#!/bin/sh\n" + nvidia_smi + "\n")
        fake.chmod(0o755)
    child = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), **env}
    return subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "--print-torch"], env=child,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("body", ['echo "No devices were found"; exit 6', "exit 127", ""])
def test_without_a_gpu_the_pinned_cpu_build(tmp_path, body):
    run = print_torch(tmp_path, body)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["torch==2.13.0"]
    assert "CPU build" in run.stderr


def test_with_a_gpu_a_cuda_build_naming_the_gpu(tmp_path):
    run = print_torch(tmp_path, 'echo "GPU 0: NVIDIA H200 (UUID: GPU-0f3c)"; echo "GPU 1: NVIDIA H200 (UUID: GPU-9a1b)"')
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["torch"]
    assert "CUDA build of torch for the NVIDIA H200 " in run.stderr


def test_kforge_torch_is_split_into_pip_arguments(tmp_path):
    spec = "torch==2.11.0 --index-url https://download.pytorch.org/whl/cu128"
    run = print_torch(tmp_path, 'echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)"', KFORGE_TORCH=spec)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == spec.split()


def test_an_unknown_argument_is_refused_by_name(tmp_path):
    run = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "--gpu"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "HOME": str(tmp_path)})
    assert run.returncode == 2 and "unknown argument '--gpu'" in run.stderr


# A venv whose python is a shell script: `-m pip ...` appends its arguments (one a line, then a
# blank line) to $PIP_LOG; the probes setup.sh runs with -c answer as $FAKE_HAS_TORCH / $FAKE_CPU_BUILD say.
FAKE_PYTHON = r'''#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
    shift 2
    printf '%s\n' "$@" "" >> "$PIP_LOG"
    exit 0
fi
if [ "$1" = "-m" ] && [ "$2" = "kforge.router.native" ]; then
    echo "native $3" >> "$PIP_LOG.native"
    [ "${FAKE_NATIVE_FAILS:-0}" = 1 ] && { echo "g++ failed" >&2; exit 1; }
    exit 0
fi
case "$2" in
    *'find_spec("torch")'*) [ "$FAKE_HAS_TORCH" = 1 ]; exit $? ;;
    *'version("torch")'*) echo 2.13.0 ;;
    *'torch.version.cuda is None'*) echo "$FAKE_CPU_BUILD" ;;
    *'find_spec('"'"'kforge'"'"')'*) exit 1 ;;
    *'version("kforge")'*) echo 0.1.0 ;;
esac
exit 0
'''


def set_up(tmp_path: Path, nvidia_smi: str | None, **env: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """Run setup.sh from a copy of the repository whose .venv holds FAKE_PYTHON, with a fake
    nvidia-smi (a shell body) first on PATH; returns the run and each pip call's arguments."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "scripts" / "setup.sh").write_text((ROOT / "scripts" / "setup.sh").read_text())
    (repo / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    python = repo / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if nvidia_smi is not None:
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\n" + nvidia_smi + "\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    log = tmp_path / "pip.log"
    child = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "PIP_LOG": str(log), "KFORGE_NO_APT": "1",
             "FAKE_HAS_TORCH": "0", "FAKE_CPU_BUILD": "False", **env}
    run = subprocess.run(["bash", str(repo / "scripts" / "setup.sh")], env=child, capture_output=True, text=True,
                         timeout=60)
    calls = [call.split("\n") for call in log.read_text().split("\n\n") if call] if log.exists() else []
    return run, calls


GPU_LIST = 'echo "GPU 0: NVIDIA H200 (UUID: GPU-0f3c)"'


@pytest.mark.parametrize("nvidia_smi, env, torch_args, says", [
    (GPU_LIST, {}, ["torch"], "installing a CUDA build of torch for the NVIDIA H200"),
    ("exit 127", {}, ["torch==2.13.0"], "installing a CPU build of torch (no NVIDIA GPU found by nvidia-smi)"),
    (None, {}, ["torch==2.13.0"], "installing a CPU build of torch"),
    (GPU_LIST, {"KFORGE_TORCH": "torch==2.11.0 --index-url https://download.pytorch.org/whl/cu128"},
     ["torch==2.11.0", "--index-url", "https://download.pytorch.org/whl/cu128"], "installing the torch KFORGE_TORCH names"),
])
def test_pip_installs_the_chosen_torch_then_kforge(tmp_path, nvidia_smi, env, torch_args, says):
    run, calls = set_up(tmp_path, nvidia_smi, **env)
    assert run.returncode == 0, run.stderr
    assert calls == [["install", *torch_args], ["install", "-e", "."]]
    assert says in run.stderr


def test_a_cpu_torch_already_in_the_venv_on_a_gpu_machine_is_kept_with_a_warning(tmp_path):
    run, calls = set_up(tmp_path, GPU_LIST, FAKE_HAS_TORCH="1", FAKE_CPU_BUILD="True")
    assert run.returncode == 0, run.stderr
    assert calls == [["install", "-e", "."]]  # torch is not touched
    assert "the venv's torch is a CPU build but this machine has an NVIDIA H200" in run.stderr
    assert "pip uninstall -y torch && bash scripts/setup.sh" in run.stderr
    run, calls = set_up(tmp_path / "cuda", GPU_LIST, FAKE_HAS_TORCH="1", FAKE_CPU_BUILD="False")  # a CUDA build: no warning
    assert run.returncode == 0 and "WARNING: the venv's torch" not in run.stderr


@pytest.mark.parametrize("fails", [False, True])
def test_the_native_call_key_is_built_and_a_failed_build_only_warns(tmp_path, fails):
    run, calls = set_up(tmp_path, None, FAKE_NATIVE_FAILS="1" if fails else "0")
    assert run.returncode == 0, run.stderr  # kforge works without it: the set-up goes on
    assert (tmp_path / "pip.log.native").read_text() == "native build\n"
    assert ("native call key was not built" in run.stderr) is fails
    assert run.stderr.rstrip().splitlines()[-1].startswith("setup: ready:")
