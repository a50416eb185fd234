#!/usr/bin/env bash
# Two processes x 2 GPUs on one 4-GPU machine (one process per GPU pair, coordinator on localhost): the 4-block
# slice with the context group spanning both processes (context=4), and with FSDP (fsdp=4, 2 batch rows each).
# Compare with the single-process rows of bench/README.md (same data, same seed). Usage: bash scripts/gpu_multiprocess.sh OUT
set -u
OUT=${1:-bench/results}; mkdir -p "$OUT"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl; fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
for mesh in context4:'(("data",1),("fsdp",1),("context",4))' fsdp4:'(("data",1),("fsdp",4),("context",1))'; do
  name=${mesh%%:*}; spec=${mesh#*:}; port=$((20000 + RANDOM % 20000))
  for i in 0 1; do
    COSMOS_JAX_COORDINATOR=localhost:$port COSMOS_JAX_NUM_PROCESSES=2 COSMOS_JAX_PROCESS_ID=$i \
    COSMOS_JAX_LOCAL_DEVICES=$((2 * i)),$((2 * i + 1)) timeout 100 python3 scripts/bench_train.py \
      --config=configs/waymo.py --blocks 4 --config.remat=attention_outside --steps 6 --config.mesh="$spec" \
      --name "train_4blocks_remat-attention_outside_${name}_2processes" --out "$OUT" > "$OUT/${name}_p$i.log" 2>&1 &
  done
  wait
  grep -E '"(name|step_time_s|samples_per_s|mfu|peak_memory_gb|loss|num_processes)"|Error' "$OUT/${name}_p0.log" "$OUT/${name}_p1.log" | tail -12
done
