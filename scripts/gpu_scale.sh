#!/usr/bin/env bash
# Multi-GPU session on one 4-GPU machine (device tool): mesh parity, in-model attention, scaling on a slice, and the
# full 7B fine-tune per (fsdp, context) split. Each stage runs in its own processes so one failure (e.g. an OOM)
# does not hide the others.
# Usage: bash scripts/gpu_scale.sh OUTDIR STAGE [STAGE ...]   stages: parity attention scaling full7b lhs
set -u
OUT=${1:-bench/results}; shift
mkdir -p "$OUT"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl; fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/env.txt"
quiet() { grep -v "^[IW][0-9]\{4\} \|^WARNING" ; }
bench() {  # NAME TIMEOUT ARGS...
  local name=$1 t=$2; shift 2
  echo "== $name"
  timeout "$t" python3 scripts/bench_train.py --config=configs/waymo.py --out "$OUT" "$@" 2>&1 | quiet \
    | grep -E '"(name|step_time_s|samples_per_s|mfu|peak_memory_gb|compile_s|loss)"|Error|error|wrote' | tee -a "$OUT/$name.txt"
}
mesh() { echo "--config.mesh=((\"data\",1),(\"fsdp\",$1),(\"context\",$2))"; }
C2=$(mesh 1 2) C4=$(mesh 1 4) F2=$(mesh 2 1) F4=$(mesh 4 1) F2C2=$(mesh 2 2)
for stage in "$@"; do
  case $stage in
    parity) timeout 240 python3 scripts/gpu_parity.py --out "$OUT" 2>&1 | quiet | tail -14 | tee "$OUT/parity.txt" ;;
    attention) timeout 240 python3 scripts/bench_attention.py --blocks 2 --config.remat=attention_outside --out "$OUT" \
                 2>&1 | quiet | tail -40 | tee "$OUT/attention.txt" ;;
    scaling)
      R=--config.remat=attention_outside
      bench scale_1 150 --blocks 4 $R --devices 1 --steps 6
      bench scale_c2 150 --blocks 4 $R --devices 2 --steps 6 "$C2"
      bench scale_c4 150 --blocks 4 $R --devices 4 --steps 6 "$C4"
      bench scale_f2 150 --blocks 4 $R --devices 2 --steps 6 "$F2"
      bench scale_f4 150 --blocks 4 $R --devices 4 --steps 6 "$F4" ;;
    full7b)  # the whole 7B per (fsdp, context) split and remat policy
      bench 7b_c4_ao 150 --config.remat=attention_outside --steps 6 "$C4"
      bench 7b_c4_full 150 --config.remat=full --steps 6 "$C4"
      bench 7b_f4_full 180 --config.remat=full --steps 6 "$F4"
      bench 7b_f2c2_ao 150 --config.remat=attention_outside --steps 6 "$F2C2" ;;
    lhs)  # the latency-hiding scheduler (overlaps collectives with compute) on the context-parallel runs
      L=--xla_gpu_enable_latency_hiding_scheduler=true
      XLA_FLAGS=$L bench 7b_c4_ao_lhs 150 --config.remat=attention_outside --steps 6 "$C4" \
        --name train_28blocks_remat-attention_outside_context4_lhs
      XLA_FLAGS=$L bench scale_c4_lhs 150 --blocks 4 --config.remat=attention_outside --devices 4 --steps 6 "$C4" \
        --name train_4blocks_remat-attention_outside_context4_lhs ;;
    *) echo "unknown stage $stage (parity attention scaling full7b lhs)"; exit 2 ;;
  esac
  # the device tool returns few files: pack the results into one, after every stage
  (cd "$OUT" && tar cf results.tar --exclude=results.tar ./*.json ./*.txt)
done
ls "$OUT"
