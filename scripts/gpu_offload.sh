#!/usr/bin/env bash
# Full fine-tune of the 7B on one GPU with config.offload, measured on a lent H200 in one call:
#   bash scripts/gpu_offload.sh OUTDIR [STAGES]
# Stages (default: all, in this order):
#   pcie   host <-> device copy rates of pinned host memory and the block loop's variants (scripts/bench_transfer.py;
#          their compiled HLO into the logs)
#   hlo    the compiled HLO of the 2-block overlapped step (into the logs): how XLA runs its host copies
#   fit    compile-only memory analysis of the 28-block step with offload_overlap (moments + EMA; moments only)
#   slice  the 6-block slice, remat full and attention_outside, each with moments + EMA offloaded (offload_overlap)
#          and without offload: the cost of streaming
#   full   the 28-block 7B, moments + EMA offloaded with offload_overlap, remat full: step time, MFU, device and host
#          peaks;  fullattn  the same with remat attention_outside (the attention's residuals kept: ~2 GB a block)
#   sliceplain / sliceovl  slice's remat-full runs one at a time (no offload / moments + EMA with offload_overlap)
#   slicepgle  sliceovl with JAX's profile-guided latency estimation (bench_train.py --pgle 2): XLA's scheduler
#          otherwise costs every host copy alike and a fused GEMM at almost nothing (scripts/aot_hlo.py)
#   slicepipe / fullpipe / hlopipe  sliceovl / full / hlo with XLA_FLAGS --xla_gpu_enable_pipelined_host_offloading=true
#   sliceopt / fullopt  the 6-block slice / the 7B with offload_overlap and the moments alone offloaded (the EMA
#          on the device: a third less to copy, if it fits)
#   sliceopt0 / fullopt0  sliceopt / fullopt with config.offload_prefetch=0 (the 7B compiles to 80.9 GiB of
#          arguments + 40.7 GiB of temporaries for an H200, scripts/aot_hlo.py)
#   slicep2 / fullp2  the 6-block slice / the 7B with config.offload_prefetch=2 (block i + 2 fetched while blocks i
#          and i + 1 compute)
#   slicep0 / fullp0  the 6-block slice / the 7B with config.offload_prefetch=0 (block i's own moments and EMA read
#          at the top of its iteration: the write-backs can then run under the block's compute)
#   slicetrace  the slice plain and with moments + EMA offloaded (offload_overlap, prefetch 0), each with one more
#          step under JAX's profiler (bench_train.py --trace): GPU time of kernels and copies, copies under kernels
#          and alone (scripts/trace_overlap.py; the summary goes into the JSON, the perfetto traces into OUTDIR)
#   slicemid / fullmid  the 6-block slice / the 7B with config.offload_midblock_fetch (block i + 1's fetch ordered
#          after block i's self-attention, the write-backs before it); sliceoptmid / fulloptmid the same, EMA on device
#   slicenocb / fullp0nocb  slicep0 / fullp0 with every XLA command buffer off
#          (XLA_FLAGS=--xla_gpu_enable_command_buffer=); offloaded runs otherwise get
#          cosmos_jax.offload.COMMAND_BUFFER_TYPES (no WHILE: a loop run as a CUDA graph serialised every host copy
#          on the compute stream, slicetrace of 2026-12-07)
#   slicethunks  compile-only 2-block slicep0 with the thunk sequence XLA runs on this card (command buffers, streams)
#          into the logs
#   fullbest  the 7B in the order the slices that ran before it on this machine found fastest: fullp0 (slicep0),
#          full (sliceovl: prefetch 1), fullmid (slicemid) or fullp0nocb (slicenocb); two of them must have run.
#          A `train` stage after it runs the same order
#   lora   LoRA r16 of the 7B with remat attention_outside (no offload)
#   train  python -m cosmos_jax.train --config=configs/waymo_1gpu.py (the user's command) on synthetic clips at the
#          seed shape, stopped with Ctrl-C (SIGINT) once step 3 is logged (steps 2 and 3 timed apart): a 7B full
#          checkpoint (~108 GB) does not fit the lent machine's 64 GB disk
# The bench JSONs land in OUTDIR, the logs in OUTDIR/offload_logs.tgz (packed again after each stage, so a call cut
# short still brings back what ran): one JSON per bench, so at most 7 benches in one call (the device tool
# brings back 8 files from $OUT).
set -u
OUT=${1:-bench/results}
STAGES=${2:-"pcie fit slice full lora"}
W=${WORK:-/root/offload}
LOGS=$W/logs
mkdir -p "$OUT" "$LOGS"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OFF='--config.offload=("opt_state","ema")'
OFF_OPT='--config.offload=("opt_state",)'  # the EMA stays on the device: a third less to stream, if it fits
OVL=--config.offload_overlap=True  # the update inside the next step's forward pass (cosmos_jax/offload_overlap.py)
LORA=(--config.lora.rank=16 --config.lora.alpha=16 "--config.lora.targets=('to_q','to_k','to_v','to_out','layer1','layer2')")
PIPE_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_pipelined_host_offloading=true"  # XLA moves loop copies to neighbours
hlo_report() {  # where the host copies of a dumped step's loops run (scripts/hlo_host_copies.py), into the log
  python3 scripts/hlo_host_copies.py "$1" 2>&1 | cut -c1-1500 | tee -a "$LOGS/offload.log"
}
bench() {  # name, timeout, args...
  local name=$1 limit=$2; shift 2
  echo "=== $name: $*" | tee -a "$LOGS/offload.log"
  timeout "$limit" python3 scripts/bench_train.py --config=configs/waymo.py --out "$OUT" "$@" > "$LOGS/$name.txt" 2>&1
  echo "rc=$?" | tee -a "$LOGS/offload.log"
  mkdir -p "$W/json" && cp "$OUT"/*.json "$W/json/" 2>/dev/null  # kept on the machine for a later call's fullbest
  grep -E '^\{"blocks"|^step [0-9]+:|"(step_time_s|mfu|peak_memory_gb|peak_host_rss_gb|compile_s)"|RESOURCE_EXHAUSTED|Error|wrote' \
    "$LOGS/$name.txt" | tail -12 | tee -a "$LOGS/offload.log"
}
stage() {  # one stage by name (fullbest runs another through it)
  local s=$1
  case $s in
    pcie)
      HLO_DIR=$LOGS/hlo timeout 240 python3 scripts/bench_transfer.py --out "$OUT" > "$LOGS/pcie.txt" 2>&1
      echo "pcie rc=$?" | tee -a "$LOGS/offload.log"; grep -E "gb_s|^[0-9a-z_]+ [0-9.]+$" "$LOGS/pcie.txt" \
        | tee -a "$LOGS/offload.log"
      for h in "$LOGS"/hlo/*.hlo.txt; do  # where each loop's host copies run (scripts/hlo_host_copies.py)
        echo "--- $(basename "$h")"; python3 scripts/hlo_host_copies.py "$h" | cut -c1-700
      done 2>&1 | tee -a "$LOGS/offload.log" ;;
    hlo)
      bench hlo_overlap 150 --blocks 2 --compile_only --config.remat=full "$OFF" $OVL \
        --dump_hlo "$LOGS/step_overlap_2blocks.hlo.txt.gz"
      hlo_report "$LOGS/step_overlap_2blocks.hlo.txt.gz" ;;
    fit)
      bench fit_overlap 150 --compile_only --config.remat=full "$OFF" $OVL
      bench fit_overlap_opt 150 --compile_only --config.remat=full "$OFF_OPT" $OVL ;;
    slice)
      bench slice_overlap 150 --blocks 6 --steps 5 --config.remat=full "$OFF" $OVL
      bench slice_overlap_attn 150 --blocks 6 --steps 5 --config.remat=attention_outside "$OFF" $OVL
      bench slice_plain_full 150 --blocks 6 --steps 5 --config.remat=full
      bench slice_plain 150 --blocks 6 --steps 5 --config.remat=attention_outside ;;
    full)
      bench full_overlap 290 --steps 3 --config.remat=full "$OFF" $OVL ;;
    fullattn)
      bench full_overlap_attn 290 --steps 3 --config.remat=attention_outside "$OFF" $OVL ;;
    sliceplain)  # the baseline alone (remat full, no offload), for a card that ran no `slice` stage
      bench slice_plain_full 150 --blocks 6 --steps 5 --config.remat=full ;;
    sliceovl)  # slice's offloaded run alone (remat full, moments + EMA, offload_overlap)
      bench slice_overlap 150 --blocks 6 --steps 5 --config.remat=full "$OFF" $OVL ;;
    slicepgle)  # sliceovl with JAX's profile-guided latency estimation (2 profiled steps, then recompiled)
      bench slice_overlap_pgle 200 --blocks 6 --steps 6 --config.remat=full "$OFF" $OVL --pgle 2 ;;
    slicepipe)  # sliceovl with XLA's pipelined host offloading (copies moved to the loop's neighbouring iterations)
      XLA_FLAGS=$PIPE_FLAGS bench slice_overlap_pipe 150 --blocks 6 --steps 5 --config.remat=full "$OFF" $OVL \
        --name slice_overlap_pipe ;;
    fullpipe)  # full with XLA's pipelined host offloading
      XLA_FLAGS=$PIPE_FLAGS bench full_overlap_pipe 290 --steps 3 --config.remat=full "$OFF" $OVL \
        --name full_overlap_pipe ;;
    hlopipe)  # the hlo stage's step compiled with pipelined host offloading
      XLA_FLAGS=$PIPE_FLAGS bench hlo_overlap_pipe 150 --blocks 2 --compile_only --config.remat=full "$OFF" $OVL \
        --dump_hlo "$LOGS/step_overlap_pipe.hlo.txt.gz"
      hlo_report "$LOGS/step_overlap_pipe.hlo.txt.gz" ;;
    sliceopt)
      bench slice_overlap_opt 150 --blocks 6 --steps 5 --config.remat=full "$OFF_OPT" $OVL ;;
    sliceopt0)
      bench slice_overlap_opt_p0 150 --blocks 6 --steps 5 --config.remat=full "$OFF_OPT" $OVL --config.offload_prefetch=0 ;;
    fullopt0)
      bench full_overlap_opt_p0 290 --steps 3 --config.remat=full "$OFF_OPT" $OVL --config.offload_prefetch=0 ;;
    slicep2)
      bench slice_overlap_p2 150 --blocks 6 --steps 5 --config.remat=full "$OFF" $OVL --config.offload_prefetch=2 ;;
    slicetrace)
      bench slice_plain_trace 180 --blocks 6 --steps 3 --config.remat=full --trace "$W/trace_plain" \
        --name slice_plain_trace
      bench slice_overlap_trace 180 --blocks 6 --steps 3 --config.remat=full "$OFF" $OVL --config.offload_prefetch=0 \
        --trace "$W/trace_overlap" --name slice_overlap_trace
      grep -h '^{"trace"' "$LOGS"/slice_*_trace.txt | tee -a "$LOGS/offload.log"
      for t in plain overlap; do  # the perfetto traces themselves, for a closer look here (16 MiB a file comes back)
        f=$(find "$W/trace_$t" -name 'perfetto_trace.json.gz' | tail -1)
        [ -n "$f" ] && [ "$(stat -c %s "$f")" -lt 16000000 ] && cp "$f" "$OUT/trace_$t.json.gz"
      done ;;
    slicenocb)  # slicep0 with no command buffers at all (a value the user sets is kept by cosmos_jax.offload)
      XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" bench slice_overlap_p0_nocb 150 --blocks 6 --steps 5 \
        --config.remat=full "$OFF" $OVL --config.offload_prefetch=0 --name slice_overlap_p0_nocb ;;
    slicethunks)  # what XLA runs on this card: the 2-block p0 step's thunks after its passes, into the logs
      XLA_FLAGS="${XLA_FLAGS:-} --xla_dump_to=$W/dump_p0 --xla_dump_hlo_module_re=jit_train_step" bench hlo_thunks_p0 150 \
        --blocks 2 --compile_only --config.remat=full "$OFF" $OVL --config.offload_prefetch=0
      cp "$W"/dump_p0/*jit_train_step*thunk_sequence_after_thunk_passes.txt "$LOGS/" 2>/dev/null
      grep -o "kCommandBuffer\|kWhile\|kAsyncStart\|kDynamicSliceFusion" "$LOGS"/*thunk_sequence_after_thunk_passes.txt \
        | sort | uniq -c | tee -a "$LOGS/offload.log" ;;
    slicep0)  # block i's moments and EMA read at the top of its own iteration (config.offload_prefetch=0)
      bench slice_overlap_p0 150 --blocks 6 --steps 5 --config.remat=full "$OFF" $OVL --config.offload_prefetch=0 ;;
    fullp0)
      bench full_overlap_p0 290 --steps 3 --config.remat=full "$OFF" $OVL --config.offload_prefetch=0 ;;
    slicemid)
      bench slice_overlap_mid 150 --blocks 6 --steps 5 --config.remat=full "$OFF" $OVL \
        --config.offload_midblock_fetch=True ;;
    sliceoptmid)  # slicemid with the EMA on the device
      bench slice_overlap_opt_mid 150 --blocks 6 --steps 5 --config.remat=full "$OFF_OPT" $OVL \
        --config.offload_midblock_fetch=True ;;
    fulloptmid)
      bench full_overlap_opt_mid 290 --steps 3 --config.remat=full "$OFF_OPT" $OVL --config.offload_midblock_fetch=True ;;
    fullmid)
      bench full_overlap_mid 290 --steps 3 --config.remat=full "$OFF" $OVL --config.offload_midblock_fetch=True ;;
    fullbest)  # the 7B in the fastest of the slice's offloaded orders that ran before it on this machine (at least
      # two of slicep0, sliceovl, slicemid, slicenocb): fullp0, full (prefetch 1), fullmid or fullp0nocb
      pick=$(python3 - "$W/json" <<'PY'
import glob, json, sys
t = {}
for f in glob.glob(sys.argv[1] + "/train_6blocks_remat-full_offload-opt_state-ema_overlap*.json"):
    r = json.load(open(f))
    if not r["name"].startswith("train_") or r.get("pgle_profiling_runs"):
        continue  # a named variant (pipelined, traced, ...) or a PGLE run: not one of the orders compared here
    key = "mid" if r.get("offload_midblock_fetch") else {0: "p0", 1: "p1"}.get(r["offload_prefetch"])
    if key:
        t[key] = r["step_time_s"]
for f in glob.glob(sys.argv[1] + "/slice_overlap_p0_nocb_*.json"):  # slicenocb, where it ran
    t["p0nocb"] = json.load(open(f))["step_time_s"]
best = min(t, key=t.get) if len(t) > 1 else "?"
print("" if best == "p1" else best)  # stage "full" is prefetch 1
PY
) || pick="?"  # the picker failed: run nothing rather than the default
      echo "fullbest: slice times pick 'full$pick'" | tee -a "$LOGS/offload.log"
      case $pick in  # the order, for a later `train` stage in this call (unless TRAIN_EXTRA was given)
        "") order=--config.offload_prefetch=1 ;;
        mid) order="--config.offload_prefetch=1 --config.offload_midblock_fetch=True" ;;
        p0|p0nocb) order=--config.offload_prefetch=0 ;;
        *) echo "fullbest needs two of slicep0, sliceovl, slicemid, slicenocb first"; exit 2 ;;
      esac
      TRAIN_EXTRA=${TRAIN_EXTRA:-$order}
      [ "$pick" = p0nocb ] && export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer="  # train too
      stage "full$pick" ;;
    fullp0nocb)  # fullp0 with no command buffers at all
      XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" bench full_overlap_p0_nocb 290 --steps 3 \
        --config.remat=full "$OFF" $OVL --config.offload_prefetch=0 --name full_overlap_p0_nocb ;;
    fullp2)
      bench full_overlap_p2 290 --steps 3 --config.remat=full "$OFF" $OVL --config.offload_prefetch=2 ;;
    fullopt)
      bench full_overlap_opt 290 --steps 3 --config.remat=full "$OFF_OPT" $OVL ;;
    lora)
      bench lora_attn 240 --steps 3 --config.remat=attention_outside "${LORA[@]}" ;;
    train)
      [ -d "$W/data/videos" ] || python3 -m cosmos_jax.data.synthetic --out "$W/data" --clips 2 --frames 60 \
        > "$LOGS/train_data.log" 2>&1
      OUTPUT_ROOT=$W/jobs python3 -m cosmos_jax.train --config=configs/waymo_1gpu.py --config.tokenizer.name=haar \
        --config.data.dataset_dir="$W/data" --config.data.val_dataset_dir="$W/none" --config.samples.enabled=False \
        --config.checkpoint.load_path= --config.max_iter=4 --config.log_every=1 --noprogress ${TRAIN_EXTRA:-} > "$LOGS/train.txt" 2>&1 &
      pid=$!
      for _ in $(seq 1 540); do
        grep -q "step 3/4" "$LOGS/train.txt" && break; kill -0 $pid 2>/dev/null || break; sleep 1
      done
      kill -INT $pid 2>/dev/null; wait $pid; echo "train rc=$?" | tee -a "$LOGS/offload.log"
      grep -E "job |state built|compiled|first step|step [0-9]/|interrupted|error" "$LOGS/train.txt" | cut -c1-400 \
        | tee -a "$LOGS/offload.log" ;;
    *) echo "unknown stage $s"; exit 2 ;;
  esac
}
for s in $STAGES; do
  stage "$s"
  tar czf "$OUT/offload_logs.tgz" -C "$LOGS" .
done
