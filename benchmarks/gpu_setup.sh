# Sourced by the gpu_*.sh scripts on the GPU machine (no package index there): the carried
# platformdirs wheel on PYTHONPATH, bubblewrap unpacked from the carried .deb (with the libraries
# in .deb/lib) and put first on PATH, $OUT created, the GPU named.
#   carry: .deb (bubblewrap_*.deb and lib/ with libselinux, libcap, libpcre2 from a Debian 12 host), .whl (platformdirs)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  && export PYTHONPATH="$PYTHONPATH:/tmp/site"
mkdir -p /tmp/bw/bin && dpkg -x .deb/bubblewrap_*.deb /tmp/bw/root
printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$PWD/.deb/lib" /tmp/bw/root/usr/bin/bwrap > /tmp/bw/bin/bwrap
chmod +x /tmp/bw/bin/bwrap; export PATH="/tmp/bw/bin:$PATH"
# The native call key (kforge/router/native): built here for this machine's torch, ~15 s; kforge
# falls back to its Python key where it cannot be (the message says why).
python3 -m kforge.router.native build 2>&1 | tail -3
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
