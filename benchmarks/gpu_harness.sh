#!/usr/bin/env bash
# The issue-3 GPU batch, in stages that each fit one device-tool call (10 minutes). JSON lands in
# benchmarks/results/h100/ and is copied to $OUT.
#   bash benchmarks/gpu_harness.sh launch       # launch-path benchmark + the GPU-side tests
#   bash benchmarks/gpu_harness.sh bench        # kforge bench on the built-in ops (seeds vs vendor)
#   bash benchmarks/gpu_harness.sh adversarial  # the cheat corpus through the harness on the GPU
#   bash benchmarks/gpu_harness.sh generate OP  # issue 4: kforge generate --provider catalog, before/after
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1 KFORGE_HOME=/tmp/kforge-home
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
case ${1:-launch} in
  launch)
    timeout 150 python3 benchmarks/triton_launch.py --rows 1 --hidden 4096 2>&1 | tail -10
    timeout 100 python3 benchmarks/triton_launch.py --rows 32 --hidden 4096 2>&1 | tail -4
    timeout 280 python3 -m pytest tests/test_cuda.py tests/test_launcher.py tests/test_triton_backend.py \
      tests/test_adversarial.py::test_gpu_only_cheat_is_rejected_on_the_gpu -q -x -p no:cacheprovider 2>&1 | tail -6
    ;;
  bench)
    for op in rms_norm fused_add_rms_norm softmax; do
      case $op in
        softmax) shapes="--shape 4096x4096 --shape 32x151936 --shape 65536x128 --shape 1x32000" ;;
        *) shapes="--shape 1x4096 --shape 32x4096 --shape 4096x4096 --shape 16384x8192" ;;
      esac
      timeout 190 python3 -m kforge bench $op $shapes --dtype bf16 --no-inductor --json \
        > "benchmarks/results/h100/bench-$op-bf16.json" 2> "$OUT/bench-$op.log"
      echo "bench $op rc=$?"; tail -3 "$OUT/bench-$op.log"
    done
    python3 -m kforge table 2>&1 | tail -30
    ;;
  generate)
    op=${2:-rms_norm}
    case $op in
      softmax) shapes="--shape 4096x4096 --shape 65536x128 --shape 32x151936" ;;
      *) shapes="--shape 32x4096 --shape 4096x4096 --shape 65536x128" ;;
    esac
    timeout ${GEN_TIMEOUT:-540} python3 -m kforge generate $op $shapes --dtype bf16 --provider catalog \
      --rounds ${ROUNDS:-2} --variants ${VARIANTS:-3} --top-k 2 --json \
      > "benchmarks/results/h100/generate-$op.json" 2> "$OUT/generate-$op.log"
    echo "generate $op rc=$?"; grep -v "^\[" "$OUT/generate-$op.log" | tail -5; tail -2 "$OUT/generate-$op.log"
    python3 -m kforge attempts list --op $op --limit 12 2>&1 | tail -14
    ;;
  adversarial)
    timeout ${ADV_TIMEOUT:-560} python3 benchmarks/adversarial_gpu.py 2>&1 | tail -40
    ;;
esac
cp benchmarks/results/h100/*.json "$OUT"/ 2>/dev/null
true
