"""cuDNN attention inside the model vs the same kernels standalone (issue speed-1gpu: >= 95 %).

    python scripts/bench_attention.py --config=configs/waymo.py [--blocks 2] [--config.remat=attention_outside]

Both sides are measured from the profiler's GPU kernel timeline, so only the attention kernels' own time counts:
1. standalone: fwd + bwd of the self-attention (B=1, L tokens, 32 heads x 128) and of the per-view cross-attention
   (B*V=3, L/V queries, 512 keys) at the seed's shape, each jitted alone;
2. in the model: a train step of a K-block slice (bench_train.build), same kernels, divided by K.
Attention kernels are the GPU kernels whose names contain one of ATTENTION_KERNELS. The ratio standalone / in-model
is the share of standalone throughput kept inside the model. JSON to bench/results/.
"""

from __future__ import annotations

import collections
import datetime
import glob
import json
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts.bench_common import write_result  # noqa: E402
from scripts.bench_train import build  # noqa: E402

ATTENTION_KERNELS = ("sdpa", "fmha", "flash", "attention")


def kernel_times(fn, reps: int) -> dict[str, float]:
    """{kernel name: seconds per call} of `fn()` over `reps` profiled calls (GPU 0 streams only)."""
    from jax.profiler import ProfileData

    jax.block_until_ready(fn())
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(reps):
                jax.block_until_ready(fn())
        path = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)[0]
        data = ProfileData.from_file(path)
    total = collections.Counter()
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU:0"):
            continue
        for line in plane.lines:
            if "stream" not in line.name.lower():
                continue
            for ev in line.events:
                total[ev.name] += ev.duration_ns * 1e-9 / reps
    return dict(total)


def attention_time(times: dict[str, float]) -> float:
    return sum(t for n, t in times.items() if any(k in n.lower() for k in ATTENTION_KERNELS))


def wall(fn, reps: int) -> float:
    jax.block_until_ready(fn())
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def standalone(length: int, views: int, heads: int, head_dim: int, text: int):
    """fwd+bwd closures of the self- and cross-attention at the model's shape."""
    k = jax.random.split(jax.random.key(0), 6)
    bf = jnp.bfloat16
    q = jax.random.normal(k[0], (1, length, heads, head_dim), bf)
    kk = jax.random.normal(k[1], (1, length, heads, head_dim), bf)
    v = jax.random.normal(k[2], (1, length, heads, head_dim), bf)
    qc = jax.random.normal(k[3], (views, length // views, heads, head_dim), bf)
    kc = jax.random.normal(k[4], (views, text, heads, head_dim), bf)
    vc = jax.random.normal(k[5], (views, text, heads, head_dim), bf)

    def fwd_bwd(q, k, v):
        o, vjp = jax.vjp(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"), q, k, v)
        return vjp(o)

    f = jax.jit(fwd_bwd)
    return (lambda: f(q, kk, v)), (lambda: f(qc, kc, vc))


def main(argv):
    del argv
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    from cosmos_jax import sharding

    fl = flags.FLAGS
    config = fl.config
    config.model.num_blocks = fl.blocks
    mesh, step, state, data, info = build(config, devices=1)
    cfg = info["cfg"]
    length, views = info["tokens_per_sample"], info["views"]
    self_fn, cross_fn = standalone(length, views, cfg.num_heads, cfg.head_dim, 512)
    self_k, cross_k = kernel_times(self_fn, fl.reps), kernel_times(cross_fn, fl.reps)
    self_s, cross_s = attention_time(self_k), attention_time(cross_k)
    self_wall = wall(self_fn, fl.reps)
    with sharding.activate(mesh):
        compiled = step.lower(state, data, jax.random.key(0)).compile()
        holder = {"state": state}

        def one_step():
            holder["state"], m = compiled(holder["state"], data, jax.random.key(1))
            return m["loss"]

        model_k = kernel_times(one_step, fl.reps)
    model_s = attention_time(model_k) / cfg.num_blocks
    self_flops = 3.5 * 4 * length * length * cfg.model_channels  # docs/performance.md §3.1: fwd+bwd = 3.5 x fwd
    result = {
        "name": f"attention_in_model_{cfg.num_blocks}blocks_remat-{config.remat}",
        "card": jax.devices()[0].device_kind, "date": datetime.date.today().isoformat(),
        "command": " ".join(["python", "scripts/bench_attention.py", *sys.argv[1:]]),
        "tokens": length, "heads": cfg.num_heads, "head_dim": cfg.head_dim, "remat": config.remat,
        "standalone_self_kernel_ms": self_s * 1e3, "standalone_cross_kernel_ms": cross_s * 1e3,
        "standalone_self_wall_ms": self_wall * 1e3,
        "standalone_self_tflops": self_flops / self_s / 1e12,
        "in_model_attention_kernel_ms_per_block": model_s * 1e3,
        "in_model_share_of_standalone": (self_s + cross_s) / model_s,
        "in_model_self_tflops_estimate": self_flops / max(model_s - cross_s, 1e-9) / 1e12,
        "step_kernel_total_ms": sum(model_k.values()) * 1e3,
        "attention_kernels_in_model": sorted(n for n in model_k if any(k in n.lower() for k in ATTENTION_KERNELS)),
        "top_kernels_in_model_ms": dict(sorted(((n, t * 1e3) for n, t in model_k.items()),
                                               key=lambda x: -x[1])[:12]),
    }
    path = write_result(result, fl.out, f"{result['name']}_{result['card'].replace(' ', '-')}.json")
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", "configs/waymo.py", "experiment config", lock_config=False)
    flags.DEFINE_integer("blocks", 2, "K-block slice for the in-model side")
    flags.DEFINE_integer("reps", 3, "profiled calls per measurement")
    flags.DEFINE_string("out", "bench/results", "output folder")
    app.run(main)
