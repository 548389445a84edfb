#!/usr/bin/env bash
# Issue 16 on the GPU machine, one device call: throughput on KEYS (regimes REGIMES), then
# `kforge tune` over MODELS' shape sets at TOKENS with a time budget, its table and kernel store
# archived as $OUT/run.tgz (table/, kernels/) for benchmarks/bundle_table.py.
#   env: KEYS (--key arguments, empty skips), REGIMES, MODELS (--model arguments, empty skips),
#        TOKENS, TUNE_SECONDS; carry: .deb, .whl (see gpu_setup.sh)
set -uo pipefail
source benchmarks/gpu_setup.sh
if [ -n "${KEYS:-}" ]; then
  python3 benchmarks/throughput.py $KEYS --regimes "${REGIMES:-spares}" --out "$OUT/throughput.json" --timeout 300
fi
if [ -n "${MODELS:-}" ]; then
  export KFORGE_HOME=/tmp/kforge-models
  /usr/bin/time -v python3 -m kforge tune $MODELS --tokens "${TOKENS:-1,16,64,2048,16384}" --device cuda --json \
    --max-seconds "${TUNE_SECONDS:-300}" > "$OUT/tune-models.json" 2> "$OUT/tune-models.log"
  echo "tune exit $?"; grep -E "Elapsed|Maximum resident" "$OUT/tune-models.log"
  grep -E "^\[" "$OUT/tune-models.log" | tail -5
  tar czf "$OUT/run.tgz" -C "$KFORGE_HOME" table kernels  # $OUT brings back only shallow folders
  ls -la "$OUT/run.tgz"
fi
true
