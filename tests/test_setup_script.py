"""scripts/setup.sh's choice of torch (`--print-torch` prints the pip arguments and installs nothing):
a CUDA build where nvidia-smi lists a GPU, the pinned CPU build elsewhere, KFORGE_TORCH split into
pip arguments so that it can name an index."""
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
