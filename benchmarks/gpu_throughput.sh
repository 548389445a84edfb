#!/usr/bin/env bash
# Issue 16's throughput on the GPU machine, in one device call: bubblewrap from a carried .deb,
# then benchmarks/throughput.py (cold workers, spares, spares + shared seed cache) on KEYS.
#   env: KEYS (--key arguments), UNSEEN (benchmarks/unseen.py arguments, empty skips)
#   carry: .deb (bubblewrap_*.deb and lib/ with libselinux, libcap, libpcre2), .whl (platformdirs)
set -uo pipefail
source benchmarks/gpu_setup.sh
KFORGE_HOME=/tmp/kforge-doctor python3 -m kforge doctor 2>&1 | grep -i -A1 isolation | head -2
python3 benchmarks/throughput.py $KEYS --out "$OUT/throughput.json" --timeout ${TUNE_TIMEOUT:-300}
if [ -n "${UNSEEN:-}" ]; then
  KFORGE_HOME=/tmp/kforge-unseen timeout ${UNSEEN_TIMEOUT:-300} python3 benchmarks/unseen.py $UNSEEN 2>&1 | tail -40
  cp benchmarks/results/h200/unseen*.json benchmarks/results/h100/unseen*.json "$OUT"/ 2>/dev/null
fi
true
