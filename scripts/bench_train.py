"""Training benchmark: real train steps on latents of the seed's shape, JSON to bench/results/ (docs/formats.md).

    python scripts/bench_train.py --config=configs/waymo.py [--blocks K] [--config.remat=full] [--steps 6]
        [--config.offload='("opt_state","ema")'] [--compile_only]

Inputs are latents (the tokenizer is not in the timed step): 3 views x 8 x 72 x 128 x 16 and 3 x 512 text tokens
per sample, one sample per data-parallel device unless --config.batch_size says otherwise. `--blocks K` runs a
K-block slice of the network (sweeps fit a call). Model FLOPs follow docs/performance.md §1: forward = token-side
linears + text K/V + joint self-attention + per-view cross-attention + patch/final; full fine-tune = 3 x forward.
MFU = model FLOPs / step time / (790e12 x devices).
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cosmos_jax.flops import HOPPER_PEAK as PEAK  # noqa: E402
from cosmos_jax.flops import model_flops_per_sample  # noqa: E402
from cosmos_jax.utils import memory as memory_lib  # noqa: E402
from scripts.bench_common import peak_memory_gb, write_result  # noqa: E402


def gemm_tflops(n: int = 8192, reps: int = 10) -> float:
    a = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e12


def memory_stats_gib(ma) -> dict:
    """XLA's compiled memory stats per device, GiB: device arguments / outputs / temporaries and the host-memory
    parts (config.offload); {} where there are none."""
    if ma is None:
        return {}
    names = ("argument", "output", "alias", "temp")
    out = {f"{n}_gib": getattr(ma, f"{n}_size_in_bytes") / 2**30 for n in names}
    out.update({f"host_{n}_gib": getattr(ma, f"host_{n}_size_in_bytes", 0) / 2**30 for n in names})
    return {k: round(v, 3) for k, v in out.items()}


def build(config, devices=0, compile_only: bool = False):
    """(mesh, jitted step, state, batch, info) for synthetic latents of the config's shape on the first `devices`
    devices (0 = all; or a list of devices, e.g. a GPU topology's for scripts/aot_hlo.py); `compile_only`: the
    state and the batch are their abstract shapes. Call and trace the step under `sharding.activate(mesh)`."""
    from cosmos_jax import offload_overlap, optim, sharding
    from cosmos_jax import step as step_lib
    from cosmos_jax import train_state as ts
    from cosmos_jax.models import build as build_lib

    if isinstance(devices, int):
        devices = jax.devices()[:devices] if devices else None
    mesh = sharding.make_mesh(config.mesh, devices=devices)
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    batch = config.batch_size or dp
    views = config.data.sample_n_views
    c_lat, t_lat, h_lat, w_lat = config.latent_shape
    cfg = build_lib.dit_config(config)
    tx = optim.make(config)
    graphdef, abstract, shardings = ts.layout(cfg, tx, mesh, offload=tuple(config.offload))
    state = abstract if compile_only else ts.create(cfg, tx, mesh, shardings)
    if config.get("offload_overlap"):  # the state carries the pending update (cosmos_jax/offload_overlap.py)
        state = (offload_overlap.with_pending(state, shardings) if not compile_only else
                 {**state, "pending": jax.eval_shape(lambda s: offload_overlap.with_pending(s, shardings)["pending"],
                                                     state)})
        shardings = offload_overlap.shardings(shardings)
    rng = np.random.default_rng(0)
    host = {"latents": (rng.standard_normal((1, batch, views, t_lat, h_lat, w_lat, c_lat)) * 0.5).astype(np.float32),
            "text": rng.standard_normal((1, batch, views, 512, cfg.crossattn_emb_channels)).astype(np.float32),
            "view_idx": np.broadcast_to(np.arange(views, dtype=np.int32), (1, batch, views)).copy(),
            "fps": np.full((1, batch), 10.0, np.float32), "frame_repeat": np.zeros((1, batch, views), np.float32)}
    batch_sh = sharding.batch_sharding(mesh, leading_axes=1)
    rank, count = sharding.data_rank(mesh, batch)  # this process's rows (all of them with one process)
    rows = slice(rank * (batch // count), (rank + 1) * (batch // count))
    if compile_only:
        data = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh) for k, v in host.items()}
    else:
        data = sharding.put_batch({k: v[:, rows] for k, v in host.items()}, batch_sh, batch)
    step = step_lib.jit_train_step(shardings, batch_sh, graphdef=graphdef, tx_parts=optim.parts(config),
                                   cfg=step_lib.StepConfig.from_config(config), tokenizer=None)
    flops = model_flops_per_sample(cfg, views, t_lat, h_lat, w_lat) * batch
    info = {"cfg": cfg, "batch": batch, "views": views, "flops": flops,
            "tokens_per_sample": views * (t_lat // cfg.patch_temporal) * (h_lat // 2) * (w_lat // 2)}
    return mesh, step, state, data, info


def main(argv):
    del argv
    # JAX's GPU allocator takes 75 % of the card by default; the 7B steps need more (set before first use).
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    from cosmos_jax import distributed, offload, sharding

    offload.prepare_backend(flags.FLAGS.config.get("offload"))  # as the train command does
    distributed.maybe_initialize()  # several processes: COSMOS_JAX_* variables or Slurm (cosmos_jax/distributed.py)
    f = flags.FLAGS
    config = f.config
    if f.blocks:
        config.model.num_blocks = f.blocks
    mesh, step, state, data, info = build(config, f.devices, f.compile_only)
    cfg, batch, flops, ndev = info["cfg"], info["batch"], info["flops"], mesh.size
    # host resident memory (GiB) as the run goes: what the offloaded state, the pinned-host allocator and the
    # process each take
    host_rss = {"state_built": memory_lib.rss_gb(), "state_built_peak": memory_lib.peak_rss_gb()}
    with sharding.activate(mesh):
        t0 = time.perf_counter()
        compiled = step.lower(state, data, jax.eval_shape(lambda: jax.random.key(0))).compile()
        compile_s = time.perf_counter() - t0
        memory = memory_stats_gib(compiled.memory_analysis())
        if f.dump_hlo:  # the optimized HLO, e.g. to see which host-memory copies XLA inserted
            import gzip
            with gzip.open(f.dump_hlo, "wt") as fh:
                fh.write(compiled.as_text())
        host_rss["compiled"] = memory_lib.rss_gb()
        print(json.dumps({"blocks": cfg.num_blocks, "compile_s": round(compile_s, 1), **memory,
                          "host_rss_gib": host_rss}), flush=True)
        if f.compile_only:
            return
        if f.pgle:  # JAX's profile-guided latency estimation: the first --pgle calls run profiled, then the step is
            # compiled again with the measured kernel and copy times for XLA's scheduler (jitted calls, not the AOT
            # executable above)
            jax.config.update("jax_enable_pgle", True)
            jax.config.update("jax_pgle_profiling_runs", f.pgle)
        run = step if f.pgle else compiled
        times = []
        for i in range(f.steps):
            t = time.perf_counter()
            state, m = run(state, data, jax.random.key(i))
            jax.block_until_ready(m["loss"])
            times.append(time.perf_counter() - t)
            host_rss[f"step_{i}"] = memory_lib.rss_gb()
            print(f"step {i}: {times[-1]:.3f} s, loss {float(m['loss']):.6f}, host RSS {host_rss[f'step_{i}']:.1f} GiB",
                  flush=True)  # a run cut short shows
        trace = None
        if f.trace:  # one more step under JAX's profiler: how much of its copying ran under its kernels
            from scripts import trace_overlap

            with jax.profiler.trace(f.trace, create_perfetto_trace=True):
                state, m = run(state, data, jax.random.key(f.steps))
                jax.block_until_ready(m["loss"])
            trace = trace_overlap.summary(trace_overlap.load(trace_overlap.find_trace(pathlib.Path(f.trace))))
            print(json.dumps({"trace": trace}), flush=True)
    step_time = statistics.median(times[1 + f.pgle:])  # after the warm-up (and PGLE's profiled runs + recompile)
    mesh_sizes = {k: int(v) for k, v in mesh.shape.items()}
    suffix = "" if ndev == 1 else "_" + "-".join(f"{k}{v}" for k, v in mesh_sizes.items() if v > 1)
    result = {
        "name": f.name or (f"train_{cfg.num_blocks}blocks_remat-{config.remat}{'_lora' if cfg.lora_rank else ''}"
                           + ("_offload-" + "-".join(config.offload) if config.offload else "")
                           + ("_overlap" if config.get("offload_overlap") else "")
                           + (f"_prefetch{config.offload_prefetch}" if config.get("offload_overlap")
                              and config.get("offload_prefetch", 1) != 1 else "")
                           + ("_midblock" if config.get("offload_overlap") and config.get("offload_midblock_fetch")
                              else "") + ("_pgle" if f.pgle else "")
                           + suffix),
        "mode": "lora" if cfg.lora_rank else "full",
        "num_devices": ndev, "card": jax.devices()[0].device_kind, "date": datetime.date.today().isoformat(),
        "command": " ".join(["python", "scripts/bench_train.py", *sys.argv[1:]]),
        "config": {"num_blocks": cfg.num_blocks, "remat": config.remat, "mesh": mesh_sizes,
                   "batch_size": batch, "dtype": cfg.dtype, "attention_impl": cfg.attention_impl,
                   "scan_blocks": cfg.scan_blocks, "lora_rank": cfg.lora_rank,
                   "lora_targets": list(cfg.lora_targets)},
        "tokens_per_sample": info["tokens_per_sample"],
        "step_time_s": step_time, "step_times_s": times, "samples_per_s": batch / step_time,
        "model_tflops_per_step": flops / 1e12, "mfu": flops / step_time / (PEAK * ndev),
        "gemm_tflops": gemm_tflops(), "peak_memory_gb": peak_memory_gb(), "compile_s": compile_s,
        "compiled_memory_gib": memory, "offload": list(config.offload),
        "offload_overlap": bool(config.get("offload_overlap")), "offload_prefetch": config.get("offload_prefetch", 1),
        "offload_midblock_fetch": bool(config.get("offload_midblock_fetch")),
        "peak_host_rss_gb": memory_lib.peak_rss_gb(),
        "loss": float(m["loss"]), "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "host_memory_limit_gb": os.environ.get(offload.HOST_LIMIT_VAR), "host_rss_gib": host_rss,
        "num_processes": jax.process_count(), "pgle_profiling_runs": f.pgle, "trace": trace,
    }
    if jax.process_index() != 0:
        return
    path = write_result(result, f.out, f"{result['name']}_{result['card'].replace(' ', '-')}_{ndev}dev.json")
    print(json.dumps({k: v for k, v in result.items() if k != "step_times_s"}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", "configs/waymo.py", "experiment config", lock_config=False)
    flags.DEFINE_integer("blocks", 0, "run a K-block slice (0 = the config's)")
    flags.DEFINE_integer("steps", 6, "steps (the first is warm-up)")
    flags.DEFINE_integer("devices", 0, "use the first N devices (0 = all): scaling runs on subsets of one machine")
    flags.DEFINE_string("name", "", "result name")
    flags.DEFINE_bool("compile_only", False, "print the compiled step's memory analysis and stop (no state made)")
    flags.DEFINE_string("out", "bench/results", "output folder")
    flags.DEFINE_string("dump_hlo", "", "write the compiled step's optimized HLO here (gzip text)")
    flags.DEFINE_string("trace", "", "profile one more step into this folder (jax.profiler, perfetto JSON) and report "
                        "its copy time under kernels and alone (scripts/trace_overlap.py)")
    flags.DEFINE_integer("pgle", 0, "profile-guided latency estimation: profile this many steps, then recompile "
                         "(0 = off); --steps must leave at least two steps after them")
    app.run(main)
