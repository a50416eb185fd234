"""Generation benchmark: upstream's view extension (guided Euler, cond + uncond batched) at the seed's latent shape.

    python scripts/bench_generate.py --config=configs/waymo.py [--views 3] [--num_steps 5] [--blocks K] [--context N]

Random weights (timing only) in the config's compute dtype, latents in (the tokenizer is not timed). Reports the
median seconds per sampler step after the first (compiling) one and the extrapolation to 35 steps.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts.bench_common import peak_memory_gb, write_result  # noqa: E402


def main(argv):
    del argv
    # JAX's GPU allocator takes 75 % of the card by default; the 7B steps need more (set before first use).
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    from flax import nnx

    from cosmos_jax import sharding
    from cosmos_jax import train_state as ts
    from cosmos_jax.diffusion import conditioning
    from cosmos_jax.diffusion import denoise as dn
    from cosmos_jax.models import build
    from cosmos_jax.models.dit import DiffusionNet
    from cosmos_jax.samples import ViewExtender

    f = flags.FLAGS
    config = f.config
    if f.blocks:
        config.model.num_blocks = f.blocks
    cfg = build.dit_config(config)
    v = f.views
    c_lat, t_lat, h_lat, w_lat = config.latent_shape

    mesh = sharding.make_mesh((("data", 1), ("fsdp", 1), ("context", f.context)), devices=jax.devices()[:f.context])
    rep = sharding.replicated(mesh)

    def init():
        with nnx.use_eager_sharding(False):
            return ts.split(DiffusionNet(cfg, rngs=nnx.Rngs(0)))[1:]

    params, buffers = jax.jit(init, out_shardings=rep)()  # the weights on each of the context devices
    graphdef = ts.split(build.abstract(cfg))[0]
    rng = np.random.default_rng(0)
    gt = jnp.asarray(rng.standard_normal((1, v, t_lat, h_lat, w_lat, c_lat)) * 0.5, jnp.float32)
    ind = conditioning.condition_indicator("first_cam", v, t_lat)[None]
    cond = dn.Condition(text_BVSE=jnp.asarray(rng.standard_normal((1, v, 512, cfg.crossattn_emb_channels)),
                                              jnp.float32),
                        view_idx_BVT=jnp.broadcast_to(jnp.arange(v)[None, :, None], (1, v, t_lat)),
                        fps_B=jnp.full((1,), 10.0), frame_repeat_BV=jnp.zeros((1, v)), input_mask_BVT=ind)
    ext = ViewExtender(graphdef)
    times = []
    last = [time.perf_counter()]

    def tick(i, n):
        jax.effects_barrier()
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    class Sync:  # block on each step's result so the timings are per step
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, *a):
            out = self.inner(*a)
            jax.block_until_ready(out)
            return out

    ext._step = Sync(ext._step)
    t0 = time.perf_counter()
    with sharding.activate(mesh):  # tokens split over `context` devices (Ulysses attention)
        lat = ext.generate(params, buffers, cond, gt, ind, jax.random.key(1), f.num_steps, 7.0, callback=tick)
        jax.block_until_ready(lat)
    total = time.perf_counter() - t0
    per_step = statistics.median(times[1:]) if len(times) > 1 else times[0]
    tokens = v * t_lat * (h_lat // 2) * (w_lat // 2)
    result = {"name": f"generate_{v}views_{cfg.num_blocks}blocks" + (f"_context{f.context}" if f.context > 1 else ""),
              "card": jax.devices()[0].device_kind, "num_devices": f.context, "date": datetime.date.today().isoformat(),
              "command": " ".join(["python", "scripts/bench_generate.py", *sys.argv[1:]]),
              "views": v, "tokens": tokens, "num_steps": f.num_steps, "dtype": cfg.dtype,
              "first_step_s_incl_compile": times[0], "step_s": per_step, "total_s": total,
              "extrapolated_35_steps_s": per_step * 35,
              "peak_memory_gb": peak_memory_gb(jax.devices()[:f.context]) or 0.0}
    write_result(result, f.out, f"{result['name']}_{result['card'].replace(' ', '-')}.json")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", "configs/waymo.py", "experiment config", lock_config=False)
    flags.DEFINE_integer("views", 3, "views (the front included)")
    flags.DEFINE_integer("num_steps", 5, "sampler steps")
    flags.DEFINE_integer("blocks", 0, "K-block slice (0 = the config's)")
    flags.DEFINE_integer("context", 1, "split the tokens over this many devices")
    flags.DEFINE_string("out", "bench/results", "output folder")
    app.run(main)
