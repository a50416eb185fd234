#!/usr/bin/env bash
# Full fine-tune of the 7B on one GPU with config.offload, measured on a lent H200 in one call:
#   bash scripts/gpu_offload.sh OUTDIR [STAGES]
# Stages (default: all, in this order):
#   fit    compile-only memory analysis of the 28-block step with offload, remat full and attention_outside
#   slice  the 6-block slice with and without offload (the cost of streaming the update)
#   full   the 28-block 7B, offload, remat full: step time, MFU, device and host peaks
#   lora   LoRA r16 of the 7B with remat attention_outside (no offload)
set -u
OUT=${1:-bench/results}
STAGES=${2:-"fit slice full lora"}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OFF='--config.offload=("opt_state","ema")'
LORA=(--config.lora.rank=16 --config.lora.alpha=16 "--config.lora.targets=('to_q','to_k','to_v','to_out','layer1','layer2')")
bench() {  # name, timeout, args...
  local name=$1 limit=$2; shift 2
  echo "=== $name: $*" | tee -a "$OUT/offload.log"
  timeout "$limit" python3 scripts/bench_train.py --config=configs/waymo.py --out "$OUT" "$@" > "$OUT/$name.txt" 2>&1
  echo "rc=$?" | tee -a "$OUT/offload.log"
  grep -E '^\{"blocks"|"(step_time_s|mfu|peak_memory_gb|peak_host_rss_gb|compile_s)"|RESOURCE_EXHAUSTED|Error|wrote' \
    "$OUT/$name.txt" | tail -12 | tee -a "$OUT/offload.log"
}
for s in $STAGES; do
  case $s in
    fit)
      bench fit_full 150 --compile_only "$OFF" --config.remat=full
      bench fit_attn 150 --compile_only "$OFF" --config.remat=attention_outside ;;
    slice)
      bench slice_plain 150 --blocks 6 --steps 5 --config.remat=attention_outside
      bench slice_offload 150 --blocks 6 --steps 5 --config.remat=attention_outside "$OFF" ;;
    full)
      bench full_offload 330 --steps 3 --config.remat=full "$OFF" ;;
    lora)
      bench lora_attn 240 --steps 3 --config.remat=attention_outside "${LORA[@]}" ;;
    *) echo "unknown stage $s"; exit 2 ;;
  esac
done
