#!/usr/bin/env bash
# Train-step sweep on a lent GPU: bash scripts/gpu_sweep.sh OUTDIR "BLOCKS:REMAT ..."
set -u
OUT=${1:-bench/results}
RUNS=${2:-"2:attention_outside 4:attention_outside 8:attention_outside 12:full"}
mkdir -p "$OUT"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl; fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
for run in $RUNS; do
  b=${run%%:*}; r=${run##*:}
  echo "=== blocks $b remat $r" | tee -a "$OUT/sweep.log"
  timeout 280 python3 scripts/bench_train.py --config=configs/waymo.py --blocks "$b" --config.remat="$r" --out "$OUT" \
    2>&1 | grep -E '"(step_time_s|mfu|peak_memory_gb|compile_s|gemm_tflops)"|RESOURCE_EXHAUSTED|Error' | tee -a "$OUT/sweep.log"
done
