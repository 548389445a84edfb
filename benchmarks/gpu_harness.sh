#!/usr/bin/env bash
# One device-tool call for issue 3: the harness on the built-in ops on an H100, the launch-path
# benchmark, and the GPU-side tests. Results land in $OUT (JSON) for benchmarks/results/h100/.
#   bash benchmarks/gpu_harness.sh
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1 KFORGE_HOME=/tmp/kforge-home
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 150 python3 benchmarks/triton_launch.py --rows 1 --hidden 4096 2>&1 | tail -9
timeout 60 python3 benchmarks/triton_launch.py --rows 32 --hidden 4096 2>&1 | tail -3
cp benchmarks/results/h100/triton_launch-*.json "$OUT"/ 2>/dev/null
for op in rms_norm fused_add_rms_norm softmax; do
  case $op in
    softmax) shapes="--shape 4096x4096 --shape 32x151936 --shape 65536x128 --shape 1x32000" ;;
    *) shapes="--shape 1x4096 --shape 32x4096 --shape 4096x4096 --shape 16384x8192" ;;
  esac
  timeout 200 python3 -m kforge bench $op $shapes --dtype bf16 --no-inductor --json > "$OUT/bench-$op.json" 2> "$OUT/bench-$op.log"
  echo "bench $op rc=$?"; tail -2 "$OUT/bench-$op.log"
done
python3 -m kforge table 2>&1 | tail -40
timeout 200 python3 -m pytest tests/test_cuda.py tests/test_triton_backend.py tests/test_harness.py -q -x -p no:cacheprovider 2>&1 | tail -4
