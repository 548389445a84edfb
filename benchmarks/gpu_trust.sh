#!/usr/bin/env bash
# Issue 14 on the GPU machine, in one device call: bubblewrap from a carried .deb (the image has
# none and no package index), then what isolation costs per worker and the whole adversarial
# corpus plus honest seeds through the harness (sandboxed workers). JSON lands in $OUT.
#   env: ISO_N (0 skips the isolation cost), BREAKDOWN_N (runs of isolation_breakdown.py),
#        GPU_TESTS (pytest node ids to run first), TESTS_TIMEOUT (s), SHARD (K/N of the corpus), ONLY (corpus names), ADV_TIMEOUT (s)
#   carry: .deb (bubblewrap_*.deb and lib/ with libselinux, libcap, libpcre2 from a Debian 12 host), .whl (platformdirs)
set -uo pipefail
export KFORGE_HOME=/tmp/kforge-home
source benchmarks/gpu_setup.sh
bwrap --ro-bind / / --dev /dev --unshare-all --die-with-parent true && echo "bwrap runs"
python3 -m kforge.cli.main doctor 2>&1 | grep -i -A4 isolation | head -8
[ "${ISO_N:-8}" != 0 ] && timeout 150 python3 benchmarks/isolation_cost.py --device cuda --n ${ISO_N:-8} --out "$OUT/isolation-cost-gpu.json" 2>&1 | tail -8
[ "${BREAKDOWN_N:-0}" != 0 ] && timeout 150 python3 benchmarks/isolation_breakdown.py --n $BREAKDOWN_N --out "$OUT/isolation-breakdown-gpu.json" 2>&1 | tail -60
[ -n "${GPU_TESTS:-}" ] && timeout ${TESTS_TIMEOUT:-120} python3 -m pytest -q -p no:cacheprovider $GPU_TESTS 2>&1 | tail -15
touch /tmp/adv-start; sleep 1
timeout ${ADV_TIMEOUT:-400} python3 benchmarks/adversarial_gpu.py ${SHARD:+--shard $SHARD} ${ONLY:+--only $ONLY} 2>&1 | tail -90
for d in benchmarks/results/h200 benchmarks/results/h100; do
  for f in $d/adversarial-gpu*.json; do [ -f "$f" ] && [ "$f" -nt /tmp/adv-start ] && cp "$f" "$OUT"/; done
done
true
