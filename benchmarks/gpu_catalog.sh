#!/usr/bin/env bash
# The issue-5 GPU batch: build the bundled score table for some ops, then benchmark them, in one
# device-tool call (10 minutes). Per op:
#   kforge bench OP --set decode --set prefill --dtype bf16 --no-candidates   vendor + torch.compile records
#   kforge generate OP (same shapes) --provider catalog                        seeds and mutants, winners recorded
# then benchmarks/ops.py over the same ops, routed through the table just built. The table shards
# land in $OUT/tables/<device slug>/<op>.json (copied into src/kforge/tables/ by hand once reviewed),
# JSON and logs in $OUT.
#   bash benchmarks/gpu_catalog.sh OUT_NAME OP [OP ...]
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1 KFORGE_HOME=${KFORGE_HOME:-/tmp/kforge-home}
OUT=${OUT:-/tmp/out}
GPU_DIR=${GPU_DIR:-h100}
name=$1; shift
mkdir -p "$OUT" "benchmarks/results/$GPU_DIR"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
start=$(date +%s)
for op in "$@"; do
  timeout ${BENCH_TIMEOUT:-150} python3 -m kforge bench "$op" --set decode --set prefill --dtype bf16 --no-candidates \
    --json > "$OUT/catalog-bench-$op.json" 2> "$OUT/catalog-bench-$op.log"
  echo "bench $op rc=$? at $(( $(date +%s) - start )) s"; tail -2 "$OUT/catalog-bench-$op.log"
  timeout ${GEN_TIMEOUT:-240} python3 -m kforge generate "$op" --set decode --set prefill --dtype bf16 --provider catalog \
    --rounds ${ROUNDS:-1} --variants ${VARIANTS:-3} --top-k 2 --json \
    > "benchmarks/results/$GPU_DIR/catalog-generate-$op.json" 2> "$OUT/catalog-generate-$op.log"
  echo "generate $op rc=$? at $(( $(date +%s) - start )) s"; grep -v "^\[" "$OUT/catalog-generate-$op.log" | tail -12
done
python3 -m kforge table 2>&1 | tail -60
mkdir -p "$OUT/tables" && cp -r "$KFORGE_HOME"/table/* "$OUT/tables/" 2>/dev/null
timeout ${OPS_TIMEOUT:-280} python3 benchmarks/ops.py --ops "$@" --gpu-dir "$GPU_DIR" --name "ops-$name.json" 2>&1 | tail -40
echo "done at $(( $(date +%s) - start )) s"
cp benchmarks/results/$GPU_DIR/*.json "$OUT"/ 2>/dev/null
true
