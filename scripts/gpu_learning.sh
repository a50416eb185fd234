#!/usr/bin/env bash
# The learning run of configs/rig_learning.py on a lent GPU, in one call:
#   bash scripts/gpu_learning.sh OUTDIR [extra train flags, e.g. --config.max_iter=900]
# synthetic rig data (16 clips + 4 held-out, 20 frames, 320 px wide; RIG_VIDEOS=DIR copies videos rendered earlier
# with the same settings and writes only their text, since rendering takes ~150 s on one core) -> a latent cache
# (python -m cosmos_jax.data.encode_latents: the video loader is bound by Python at ~20 samples/s) ->
# python -m cosmos_jax.train (scored at every save; stopped with SIGINT after TRAIN_LIMIT s, default 360) ->
# python -m cosmos_jax.evaluate on the held-out clips (at most EVAL_LIMIT s, default 140; then once more with one
# sampler step, the network's mean estimate, 60 s at most). Metrics, plots and sheets are copied to OUTDIR, the logs
# and every sample sheet packed in OUTDIR/logs.tgz: 8 files, what the device tool brings back from $OUT. Ends with
# scripts/learning_table.py's table.
# Rendering the videos where they are made (a few MB; the text is written on the device):
#   python -m cosmos_jax.data.synthetic --out /tmp/rig --clips 16 --frames 20 --heldout 4 --scale 2.2222222
#   mkdir -p datasets/rig_learning_videos/heldout && cp -r /tmp/rig/{videos,rig} datasets/rig_learning_videos/ &&
#   cp -r /tmp/rig/heldout/{videos,rig} datasets/rig_learning_videos/heldout/
#   device call: RIG_VIDEOS=datasets/rig_learning_videos bash scripts/gpu_learning.sh $OUT/rig  (carry .whl and it)
# CLIPS=N: N training clips (default 16; the videos in RIG_VIDEOS must have been rendered with --clips N); the
# held-out clips are the same for any N (each clip is a function of the seed and its index). The third run (README):
#   CLIPS=64 RIG_VIDEOS=datasets/rig_learning_videos64 TRAIN_LIMIT=280 EVAL_LIMIT=120 bash scripts/gpu_learning.sh OUT
set -u
OUT=${1:-bench/results/rig_learning}; shift || true
WORK=${WORK:-/root/rig_learning}
LOGS=$WORK/logs
mkdir -p "$OUT" "$WORK" "$LOGS"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OUTPUT_ROOT=$WORK/jobs
t0=$(date +%s)
SYNTH=(--out "$WORK/data" --clips "${CLIPS:-16}" --frames 20 --heldout 4 --scale 2.2222222)
if [ ! -d "$WORK/data/videos" ]; then
  if [ -n "${RIG_VIDEOS:-}" ]; then cp -r "$RIG_VIDEOS" "$WORK/data"; SYNTH+=(--text_only); fi
  python3 -m cosmos_jax.data.synthetic "${SYNTH[@]}" 2>&1 | tail -2 | tee "$LOGS/data.log"
fi
[ -f "$WORK/latents/index.json" ] || python3 -m cosmos_jax.data.encode_latents --config=configs/rig_learning.py \
  --config.data.dataset_dir="$WORK/data" --out "$WORK/latents" > "$LOGS/latents.log" 2>&1
echo "data $(( $(date +%s) - t0 )) s" | tee -a "$LOGS/times.txt"
# Ctrl-C (SIGINT) after TRAIN_LIMIT seconds: training stops cleanly and evaluate scores the last saved step
timeout -s INT -k 30 "${TRAIN_LIMIT:-360}" python3 -m cosmos_jax.train --config=configs/rig_learning.py \
  --config.data.dataset_dir="$WORK/data" --config.data.latent_cache="$WORK/latents" --noprogress "$@" \
  > "$LOGS/train.log" 2>&1
echo "train rc=$? $(( $(date +%s) - t0 )) s" | tee -a "$LOGS/times.txt"
JOB=$WORK/jobs/posttraining/quality/rig_learning
timeout -k 10 "${EVAL_LIMIT:-140}" python3 -m cosmos_jax.evaluate --checkpoint "$JOB" --dataset "$WORK/data" \
  --clips 4 --num_steps 35 --guidance 3 --out "$WORK/evaluate" > "$LOGS/evaluate.log" 2>&1
echo "evaluate rc=$? $(( $(date +%s) - t0 )) s" | tee -a "$LOGS/times.txt"
# One sampler step = the network's x0 from pure noise, its estimate of the mean view: what it has learned of the
# layout, without the detail a full sampling run invents (into logs.tgz)
timeout -k 10 60 python3 -m cosmos_jax.evaluate --checkpoint "$JOB" --dataset "$WORK/data" --clips 4 --num_steps 1 \
  --guidance 3 --out "$WORK/evaluate_1step" > "$LOGS/evaluate_1step.log" 2>&1
cp "$WORK/evaluate_1step/metrics.json" "$LOGS/evaluate_1step_metrics.json" 2>/dev/null
cp "$JOB/metrics.jsonl" "$JOB/summary.json" "$JOB/quality.png" "$JOB/loss.png" "$OUT/" 2>/dev/null
cp "$WORK/evaluate/metrics.json" "$OUT/evaluate_metrics.json" 2>/dev/null
cp "$(ls "$WORK"/evaluate/*_sheet.png | head -1)" "$OUT/evaluate_sheet.png" 2>/dev/null
cp "$(ls "$JOB"/samples/*_sheet.png | tail -1)" "$OUT/last_sample_sheet.png" 2>/dev/null
cp "$JOB"/samples/*_sheet.png "$LOGS/" 2>/dev/null
tar czf "$OUT/logs.tgz" -C "$LOGS" .
grep -E "generated views|for reference|step [0-9]+/" "$LOGS/train.log" | tail -20
tail -c 1500 "$LOGS/evaluate.log"
python3 scripts/learning_table.py "$OUT" --card "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
