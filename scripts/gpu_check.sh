#!/usr/bin/env bash
# One device session: environment, parity on the GPU, train-step slices per remat policy, 7B sampling timing.
# Usage on a lent GPU machine (see README "Benchmarks"): bash scripts/gpu_check.sh OUTDIR
set -u
OUT=${1:-bench/results}
mkdir -p "$OUT"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl; fi
export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
python3 -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" 2>&1 | tee -a "$OUT/env.txt"
python3 - <<'PY' 2>&1 | tee "$OUT/parity_gpu.txt"
import json, numpy as np, jax, jax.numpy as jnp
from tests.conftest import tiny_dit_config
from tests.models.test_parity import to_bvthwc, V, T
from cosmos_jax.weights.dit import load_pt_into
from cosmos_jax.models import build
io = dict(np.load("tests/data/parity/dit_tiny_io.npz"))
for dtype, impl in (("float32", "xla"), ("bfloat16", "cudnn")):
    m = build.create(tiny_dit_config(dtype=dtype, attention_impl=impl))
    load_pt_into(m, "tests/data/parity/dit_tiny.pt")
    with jax.default_matmul_precision("highest"):
        y = m.net(jnp.asarray(to_bvthwc(io["x"])), jnp.asarray(io["timesteps"]), jnp.asarray(io["crossattn_emb"].reshape(1, V, 512, -1)),
                  jnp.asarray(io["condition_video_input_mask"][:, 0, :, 0, 0].reshape(1, V, T)), jnp.asarray(io["view_indices_B_T"].reshape(1, V, T)),
                  jnp.asarray(io["fps"]), jnp.asarray(io["frame_repeat"]), jnp.asarray(io["padding_mask"][:, 0]))
    ref = to_bvthwc(io["output"])
    print(dtype, impl, "rel err", float(np.abs(np.asarray(y) - ref).max() / np.abs(ref).max()))
PY
for remat in none dots full; do
  timeout 200 python3 scripts/bench_train.py --config=configs/waymo.py --blocks 2 --config.remat=$remat --out "$OUT" 2>&1 | grep -v "^I1126\|^W1126" | tail -25 | tee "$OUT/train_2blocks_$remat.txt"
done
timeout 240 python3 scripts/bench_generate.py --config=configs/waymo.py --views 3 --num_steps 3 --out "$OUT" 2>&1 | tail -20 | tee "$OUT/generate.txt"
