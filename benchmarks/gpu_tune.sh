#!/usr/bin/env bash
# Issue 16 on the GPU machine, in one device call: bubblewrap from a carried .deb, the CUDA tests,
# `kforge tune` at keys of unseen shapes (per-candidate phases in its JSON), then benchmarks/unseen.py.
#   env: DECODE (benchmarks/decode.py arguments, empty skips), PROBE (1: benchmarks/probes/vendor_host.py), DISPATCH (1: benchmarks/dispatch_overhead.py on cuda, bf16), DEMO (1: `kforge demo --device cuda` timed, its JSON and log kept), GPU_TESTS (pytest args, empty skips), TUNE_KEYS (--key arguments, empty skips), UNSEEN (unseen.py arguments, empty skips), SEEDS (benchmarks/seeds.py --ops list, e.g. fused_moe), HF_MODELS (benchmarks/models.py arguments: issue 19's models), COMPILE_AB (1: benchmarks/probes/compile_ab.py --gpu)
#   carry: .deb (bubblewrap_*.deb and lib/), .whl (pure-Python wheels the image lacks)
set -uo pipefail
export KFORGE_HOME=/tmp/kforge-home
source benchmarks/gpu_setup.sh
python3 -m kforge.cli.main doctor 2>&1 | grep -i -A2 isolation | head -4
if [ -n "${DEMO:-}" ]; then
  KFORGE_HOME=/tmp/kforge-demo /usr/bin/time -v python3 -m kforge demo --device cuda --json > "$OUT/demo.json" 2> "$OUT/demo.log"
  echo "demo exit $?"; grep -E "Elapsed|Maximum resident" "$OUT/demo.log"; tail -5 "$OUT/demo.log"
fi
[ -n "${GPU_TESTS:-}" ] && timeout ${TESTS_TIMEOUT:-150} python3 -m pytest -q -p no:cacheprovider $GPU_TESTS 2>&1 | tail -15
if [ -n "${PROBE:-}" ]; then
  timeout 120 python3 benchmarks/probes/vendor_host.py 2>&1 | tail -14
  cp benchmarks/results/h200/vendor-host.json "$OUT"/ 2>/dev/null
fi
if [ -n "${DISPATCH:-}" ]; then
  timeout ${DISPATCH_TIMEOUT:-240} python3 benchmarks/dispatch_overhead.py --device cuda --dtype bfloat16 --number ${DISPATCH_NUMBER:-5000} --repeat 7 \
    --out dispatch_overhead-cuda.json 2>&1 | tail -14
  cp benchmarks/results/dispatch_overhead-cuda.json "$OUT"/ 2>/dev/null
fi
if [ -n "${TUNE_KEYS:-}" ]; then
  /usr/bin/time -v python3 -m kforge tune $TUNE_KEYS --device cuda --json ${TUNE_ARGS:-} > "$OUT/tune-keys.json" 2> "$OUT/tune-keys.log"
  echo "tune exit $?"; grep -E "^\[|accepted|rejected|Elapsed|Maximum resident" "$OUT/tune-keys.log" | tail -40
fi
if [ -n "${DECODE:-}" ]; then
  timeout ${DECODE_TIMEOUT:-540} python3 benchmarks/decode.py $DECODE --out "$OUT/decode-partial.json" 2>&1 | tail -30
  cp benchmarks/results/h200/decode*.json "$OUT"/ 2>/dev/null
fi
if [ -n "${UNSEEN:-}" ]; then
  timeout ${UNSEEN_TIMEOUT:-400} python3 benchmarks/unseen.py $UNSEEN 2>&1 | tail -70
  cp benchmarks/results/h200/unseen*.json benchmarks/results/h100/unseen*.json "$OUT"/ 2>/dev/null
fi
if [ -n "${SEEDS:-}" ]; then
  timeout ${SEEDS_TIMEOUT:-300} python3 benchmarks/seeds.py --ops $SEEDS --name seeds-${SEEDS// /-}.json 2>&1 | tail -20
  cp benchmarks/results/h200/seeds-*.json "$OUT"/ 2>/dev/null
fi
if [ -n "${COMPILE_AB:-}" ]; then
  timeout ${COMPILE_AB_TIMEOUT:-300} python3 benchmarks/probes/compile_ab.py --gpu > "$OUT/compile_ab.json" 2> "$OUT/compile_ab.log"
  echo "compile_ab exit $?"; tail -3 "$OUT/compile_ab.log"
fi
if [ -n "${HF_MODELS:-}" ]; then
  timeout ${HF_MODELS_TIMEOUT:-540} python3 benchmarks/models.py $HF_MODELS --out "$OUT/models.json" 2>&1 | tail -40
fi
true
