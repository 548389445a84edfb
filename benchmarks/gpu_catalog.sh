#!/usr/bin/env bash
# The issue-5 GPU batch: build the bundled score table for some ops, then benchmark them, in one
# device-tool call (10 minutes). Per op:
#   kforge bench OP --set decode --set prefill --dtype bf16       vendor, torch.compile and the catalog seeds
#   kforge generate OP (same shapes) --provider catalog           mutants of the seeds (only when GEN_SECONDS > 0)
# then benchmarks/ops.py over the same ops, routed through the table just built. Everything lands in
# one archive, $OUT/NAME.tgz (the device tool returns few files): the table shards under
# tables/<device slug>/<op>.json (copied into src/kforge/tables/ once reviewed), the JSON and logs.
#   bash benchmarks/gpu_catalog.sh NAME OP [OP ...]
# Environment: GPU_DIR (results folder, h100), BENCH_TIMEOUT (per op, 200 s), GEN_SECONDS (0: no
# generate), NO_INDUCTOR (ops whose bench skips torch.compile: a table that already has its records,
# or no time to compile every shape), OPS_TIMEOUT (280 s; 0: no ops.py), OPS (ops.py's ops when they differ from the table's).
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1 KFORGE_HOME=${KFORGE_HOME:-/tmp/kforge-home}
OUT=${OUT:-/tmp/out}
GPU_DIR=${GPU_DIR:-h100}
name=$1; shift
mkdir -p "$OUT" "benchmarks/results/$GPU_DIR"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
start=$(date +%s)
for op in "$@"; do
  flags=""; case " ${NO_INDUCTOR:-} " in *" $op "*) flags="--no-inductor";; esac
  timeout ${BENCH_TIMEOUT:-200} python3 -m kforge bench "$op" --set decode --set prefill --dtype bf16 $flags \
    --json > "$OUT/catalog-bench-$op.json" 2> "$OUT/catalog-bench-$op.log"
  echo "bench $op rc=$? at $(( $(date +%s) - start )) s"; grep -v "^\[" "$OUT/catalog-bench-$op.log" | tail -4
  if [ "${GEN_SECONDS:-0}" -gt 0 ]; then
    timeout $(( GEN_SECONDS + 120 )) python3 -m kforge generate "$op" --set decode --set prefill --dtype bf16 \
      --provider catalog --rounds ${ROUNDS:-2} --variants ${VARIANTS:-3} --top-k 2 --max-seconds "$GEN_SECONDS" --json \
      > "$OUT/catalog-generate-$op.json" 2> "$OUT/catalog-generate-$op.log"
    echo "generate $op rc=$? at $(( $(date +%s) - start )) s"; grep -v "^\[" "$OUT/catalog-generate-$op.log" | tail -12
  fi
done
python3 -m kforge table 2>&1 | cut -c1-150 | tail -80
mkdir -p "$OUT/tables" && cp -r "$KFORGE_HOME"/table/* "$OUT/tables/" 2>/dev/null
rm -f "$OUT"/tables/*/*.lock
cp -r "$KFORGE_HOME/kernels" "$OUT/kernels" 2>/dev/null
if [ "${OPS_TIMEOUT:-280}" -gt 0 ]; then  # OPS_TIMEOUT=0: the table only
  timeout ${OPS_TIMEOUT:-280} python3 benchmarks/ops.py --ops ${OPS:-"$@"} --gpu-dir "$GPU_DIR" --name "ops-$name.json" 2>&1 | tail -40
  cp "benchmarks/results/$GPU_DIR/ops-$name.json" "$OUT/" 2>/dev/null
fi
echo "done at $(( $(date +%s) - start )) s"
cd "$OUT" && tar czf "/tmp/$name.tgz" --exclude "*.tgz" . && find . -mindepth 1 -delete && mv "/tmp/$name.tgz" .
true
