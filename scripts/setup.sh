#!/usr/bin/env bash
# Set up kforge in ./.venv (idempotent; a second run with nothing changed takes about a second).
#
#   bash scripts/setup.sh          # runtime + CLI:  .venv/bin/kforge demo
#   bash scripts/setup.sh --test   # plus the test dependencies:  .venv/bin/python -m pytest -q
#   bash scripts/setup.sh --print-torch   # the pip arguments it would install torch with, then exit
#
# torch goes in first when the venv has none. Where `nvidia-smi -L` lists an NVIDIA GPU, a CUDA
# build: `pip install torch` (the default index's Linux wheels are CUDA builds, several GB). Elsewhere
# a CPU build: `pip install torch==2.13.0` (on the project's machines a CPU wheel from local disk).
# KFORGE_TORCH overrides both and is split into pip arguments, so it can name a version, a wheel path
# or an index, e.g. KFORGE_TORCH="torch==2.11.0 --index-url https://download.pytorch.org/whl/cu128"
# or KFORGE_TORCH="torch --index-url https://download.pytorch.org/whl/cpu". A venv that already has
# a CPU torch on a GPU machine gets a warning saying how to replace it. PYTHON picks the interpreter
# that creates the venv (default python3, 3.10 or newer). Messages go to stderr.
# Candidate kernels run in bubblewrap sandboxes: bwrap is installed with apt when this runs as root
# and it is missing (KFORGE_NO_APT=1 skips that); otherwise the script says what to do.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
CPU_TORCH="torch==2.13.0"

say() { echo "setup: $*" >&2; }

mode=runtime
for arg in "$@"; do
    case "$arg" in
        --test) mode=test ;;
        --print-torch) mode=print-torch ;;
        -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
        *) say "unknown argument '$arg' (use --test, --print-torch or nothing)"; exit 2 ;;
    esac
done

# The GPU the driver lists first ("" without nvidia-smi or without a GPU).
gpu_name() { { nvidia-smi -L 2>/dev/null || true; } | sed -n 's/^GPU 0: \([^(]*\).*/\1/p' | sed 's/ *$//'; }
GPU="$(gpu_name)"
# TORCH_ARGS: the pip arguments for torch; TORCH_WHY: what they are, for the message.
if [ -n "${KFORGE_TORCH:-}" ]; then
    read -r -a TORCH_ARGS <<< "$KFORGE_TORCH"
    TORCH_WHY="the torch KFORGE_TORCH names"
elif [ -n "$GPU" ]; then
    TORCH_ARGS=(torch)
    TORCH_WHY="a CUDA build of torch for the $GPU (several GB; KFORGE_TORCH picks another)"
else
    TORCH_ARGS=("$CPU_TORCH")
    TORCH_WHY="a CPU build of torch (no NVIDIA GPU found by nvidia-smi)"
fi
if [ "$mode" = print-torch ]; then
    echo "${TORCH_ARGS[*]}"
    say "would install $TORCH_WHY"
    exit 0
fi

# bubblewrap isolates the workers that run candidate kernels; without it they are refused.
bwrap_works() { bwrap --unshare-all --die-with-parent --ro-bind /usr /usr --symlink usr/lib /lib \
    --symlink usr/lib64 /lib64 --symlink usr/bin /bin --proc /proc --dev /dev -- /usr/bin/true 2>/dev/null; }
if ! command -v bwrap >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ -z "${KFORGE_NO_APT:-}" ]; then
        say "installing bubblewrap (sandboxes candidate kernels): apt-get install -y bubblewrap"
        if ! { apt-get install -y bubblewrap >&2 || { apt-get update >&2 && apt-get install -y bubblewrap >&2; }; }; then
            say "WARNING: could not install bubblewrap; candidate kernels will be refused (see kforge doctor)"
        fi
    else
        say "WARNING: bubblewrap (bwrap) is missing: install it (sudo apt-get install -y bubblewrap, or"
        say "  sudo dnf install bubblewrap); until then kforge refuses to run untrusted candidate kernels"
        say "  (kforge's own catalog seeds still run; --unsafe-no-sandbox runs the others unsandboxed)"
    fi
fi
if command -v bwrap >/dev/null 2>&1 && ! bwrap_works; then
    say "WARNING: bwrap cannot create its namespaces here (unprivileged user namespaces refused?):"
    say "  sysctl kernel.unprivileged_userns_clone=1 (or on Ubuntu 24.04+ kernel.apparmor_restrict_unprivileged_userns=0)"
fi

if [ ! -x "$PY" ]; then
    base="${PYTHON:-python3}"
    if ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
        say "kforge needs Python 3.10 or newer; '$base' is $("$base" --version 2>&1 || echo missing)"
        exit 1
    fi
    say "creating $VENV with $("$base" --version 2>&1)"
    "$base" -m venv "$VENV"
fi

# Metadata and import specs only: importing torch takes seconds.
if "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)' 2>/dev/null; then
    say "torch $("$PY" -c 'from importlib.metadata import version; print(version("torch"))') already in the venv"
    # On a GPU machine only (importing torch takes seconds): a CPU build there runs everything on the CPU.
    if [ -n "$GPU" ] && [ -z "${KFORGE_TORCH:-}" ] && [ "$("$PY" -c 'import torch; print(torch.version.cuda is None)' 2>/dev/null)" = True ]; then
        say "WARNING: the venv's torch is a CPU build but this machine has an $GPU: kforge will run on the CPU."
        say "  For a CUDA build: $PY -m pip uninstall -y torch && bash scripts/setup.sh"
        say "  (or KFORGE_TORCH=\"torch --index-url https://download.pytorch.org/whl/cu128\" for a given CUDA)"
    fi
else
    say "installing $TORCH_WHY: pip install ${TORCH_ARGS[*]}"
    "$PY" -m pip install "${TORCH_ARGS[@]}" >&2
fi

# The stamp records what was installed for which pyproject.toml; a test install covers runtime.
stamp="$VENV/.kforge-setup"
digest="$(sha256sum pyproject.toml | cut -c1-64)"
installed_for() { [ -f "$stamp" ] && grep -qx "$digest $1 $ROOT" "$stamp"; }
importable() {
    "$PY" -c "import importlib.util as u, sys; s = u.find_spec('kforge'); sys.exit(not (s and s.origin.startswith('$ROOT/')))" 2>/dev/null
}

if { installed_for "$mode" || installed_for test; } && importable && [ -x "$VENV/bin/kforge" ]; then
    say "kforge ($mode) already installed in $VENV"
else
    target="."
    [ "$mode" = test ] && target=".[test]"
    say "installing kforge: pip install -e '$target'"
    "$PY" -m pip install -e "$target" >&2
    echo "$digest $mode $ROOT" > "$stamp"
fi
# The native call key (kforge/router/native): one g++ command, ~15 s, once per Python, torch and
# source version. Without a compiler kforge uses its Python key (~1 us more per call; doctor says so).
if ! "$PY" -m kforge.router.native build >&2; then
    say "WARNING: kforge's native call key was not built (see above); kforge works without it, slower per call"
fi
say "ready: $VENV/bin/kforge (kforge $("$PY" -c 'from importlib.metadata import version; print(version("kforge"))'))"
