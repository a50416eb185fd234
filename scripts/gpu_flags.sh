#!/usr/bin/env bash
# XLA GPU flag sweep on a 2-block slice (attention_outside): bash scripts/gpu_flags.sh OUTDIR
set -u
OUT=${1:-bench/results}
mkdir -p "$OUT"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl 2>/dev/null; fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
i=0
for flags in "" "--xla_gpu_enable_triton_gemm=false" "--xla_gpu_autotune_level=0" "--xla_gpu_enable_latency_hiding_scheduler=true"; do
  i=$((i+1))
  echo "=== XLA_FLAGS='$flags'" | tee -a "$OUT/flags.log"
  XLA_FLAGS="$flags" timeout 150 python3 scripts/bench_train.py --config=configs/waymo.py --blocks 2 \
    --config.remat=attention_outside --name "flags$i" --out "$OUT" 2>&1 | grep -E '"(step_time_s|mfu)"|Error' | tee -a "$OUT/flags.log"
done
