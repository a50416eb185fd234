"""`python -m cosmos_jax.train --config=configs/waymo.py[:t2w|:v2w] [--config.a.b=value ...]`

Post-training of the Single2MultiView DiT. Rerunning the same command resumes the job from its last complete
checkpoint (state, EMA, optimizer and data-iterator position). Sections: config and job directory, mesh, data,
state (restore, base weights or fresh), the jitted step, the loop (log, save + export + validation + samples).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

from cosmos_jax import checkpoint, distributed, lora, optim, sharding
from cosmos_jax import step as step_lib
from cosmos_jax import train_state as ts
from cosmos_jax.data import dataset, pipeline
from cosmos_jax.data.latent_cache import LatentCacheSource
from cosmos_jax.models import build
from cosmos_jax.models import tokenizer as tok
from cosmos_jax.utils import metrics as metrics_lib
from cosmos_jax.validation import Validator

log = logging.getLogger("cosmos_jax.train")
STEP_KEYS = ("video", "latents", "text", "view_idx", "fps", "frame_repeat")


def job_dir(config) -> str:
    root = os.environ.get("OUTPUT_ROOT", "checkpoints")
    return os.path.join(root, config.job.project, config.job.group, config.job.name)


def _fault(kind: str, step: int) -> None:
    """Test hook: COSMOS_JAX_FAULT=kill_after_step:N or kill_during_save:N ends the process abruptly."""
    spec = os.environ.get("COSMOS_JAX_FAULT", "")
    if spec == f"{kind}:{step}":
        sys.stdout.flush()
        os._exit(137)


def global_batch(config, mesh) -> int:
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    b = config.batch_size or dp  # 0: one sample per data-parallel device, as upstream's 1 per GPU
    if b % dp:
        raise ValueError(f"batch_size={b} must be a multiple of the data-parallel size data*fsdp={dp}")
    return b


def quiet_libraries() -> None:
    """Orbax and grain log every save at INFO through absl; keep their warnings, drop the chatter."""
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("cosmos_jax").setLevel(logging.INFO)


def train(config, progress: bool = True) -> dict:
    """Run (or resume) the job; returns the final metrics. Multi-process: call `distributed.maybe_initialize`
    first (the CLI does), then every process runs this."""
    quiet_libraries()
    config = config.copy_and_resolve_references()
    mesh = sharding.make_mesh(config.mesh)
    with sharding.activate(mesh):  # the model's activation constraints and Ulysses attention read this mesh
        return _train(config, mesh, progress)


def _train(config, mesh, progress: bool) -> dict:
    # ---- config and job directory ------------------------------------------------------------------------
    jdir = job_dir(config)
    os.makedirs(jdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(jdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    cfg_dit = build.dit_config(config)
    step_cfg = step_lib.StepConfig.from_config(config)
    # ---- data: each process reads the rows of its data-parallel group(s) ------------------------------------
    batch = global_batch(config, mesh)
    spec = dataset.DataSpec.from_config(config)
    tokenizer = tok.from_config(config)
    if config.data.latent_cache:
        source = LatentCacheSource(config.data.latent_cache, spec, tokenizer)
    else:
        source = dataset.MultiviewWindows(spec)
    data_iter = pipeline.make_iterator(source, config.seed, batch, *sharding.data_rank(mesh, batch),
                                       num_threads=config.data.num_workers)
    # ---- state: resume, base weights, or fresh -------------------------------------------------------------
    tx = optim.make(config)
    graphdef, abstract, shardings = ts.layout(cfg_dit, tx, mesh, config.seed)
    ckpt = checkpoint.Manager(jdir, config.checkpoint.max_to_keep)
    latest = ckpt.latest_step()
    if latest is not None:
        state, data_state, _ = ckpt.restore(latest, abstract)
        data_iter.set_state(data_state)
        log.info("resumed %s at step %d", jdir, latest)
    else:
        state = ts.create(cfg_dit, tx, mesh, shardings, config.seed)
        if config.checkpoint.load_path:
            params, buffers = checkpoint.load_weights(config.checkpoint.load_path, abstract, shardings)
            state = ts.with_weights(state, params, buffers, shardings)
            log.info("started from base weights %s", config.checkpoint.load_path)
    # ---- the jitted step -----------------------------------------------------------------------------------
    batch_sh = sharding.batch_sharding(mesh, leading_axes=1)
    train_step = step_lib.jit_train_step(shardings, batch_sh, graphdef=graphdef, tx=tx, cfg=step_cfg,
                                         tokenizer=tokenizer)
    schedule = optim.schedule(config)
    validator = Validator.maybe(config, graphdef, tokenizer, step_cfg, mesh, jdir)
    writer = metrics_lib.MetricWriter(jdir)
    # ---- loop ----------------------------------------------------------------------------------------------
    start = int(jax.device_get(state["step"]))
    base_key = jax.random.key(config.seed)
    bar = tqdm(total=config.max_iter, initial=start, disable=not progress or jax.process_index() > 0,
               desc=config.job.name, dynamic_ncols=True)
    last, t_last, skipped, host = {}, time.time(), 0, None
    if start == 0 and validator:
        writer.write(0, validator.run(state, 0, with_samples=False), prefix="val")
    for it in range(start, config.max_iter):
        micro = [next(data_iter) for _ in range(config.grad_accum)]
        skipped += int(sum(int(np.sum(m["skipped"])) for m in micro))
        first_window = int(micro[0]["window"][0])
        host = {k: np.stack([m[k] for m in micro]) for k in STEP_KEYS if k in micro[0]}
        state, m = train_step(state, sharding.put_batch(host, batch_sh, batch), jax.random.fold_in(base_key, it))
        _fault("kill_after_step", it + 1)
        done = it + 1
        if done % config.log_every == 0 or done == config.max_iter:
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            dt = (time.time() - t_last) / (done - (last.get("step") or start))
            t_last = time.time()
            m.update(lr=float(schedule(it)), step_time_s=dt, samples_per_s=batch * config.grad_accum / dt,
                     skipped_samples=skipped, first_window=first_window)
            writer.write(done, m)
            last = {"step": done, **m}
            bar.set_postfix(loss=f"{m['loss']:.4f}", gnorm=f"{m['grad_norm']:.3f}")
        bar.update(1)
        if done % config.checkpoint.save_iter == 0 or done == config.max_iter:
            ckpt.save(done, state, data_iter.get_state(), {"seed": config.seed, "step": done})
            _fault("kill_during_save", done)
            if config.checkpoint.export_pt:  # every process takes part in the gather; process 0 writes
                out_dir = os.path.join(jdir, "checkpoints")
                scale = cfg_dit.lora_alpha / cfg_dit.lora_rank if cfg_dit.lora_rank else 0.0
                checkpoint.export_pt(state, cfg_dit.num_blocks, out_dir, done, lora_scale=scale)
                if cfg_dit.lora_rank:
                    adapters = ts.flat(sharding.to_host(state["params"]))
                    if jax.process_index() == 0:
                        lora.export_adapters(adapters, cfg_dit.num_blocks,
                                             os.path.join(out_dir, f"iter_{done:09d}_lora"), cfg_dit.lora_rank,
                                             cfg_dit.lora_alpha, cfg_dit.lora_targets)
            if validator:
                val = validator.run(state, done)
                writer.write(done, val, prefix="val")
                last.update(val)
    bar.close()
    ckpt.close()
    writer.close()
    summary = {"job_dir": jdir, "final": last, "loss_plot": None}
    if jax.process_index() == 0:
        summary["loss_plot"] = metrics_lib.plot_losses(os.path.join(jdir, "metrics.jsonl"),
                                                       os.path.join(jdir, "loss.png"))
        with open(os.path.join(jdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2, default=str)
    return summary


def main(argv):
    del argv
    # JAX's GPU allocator takes 75 % of the card by default; the 7B steps need more (set before first use).
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    if flags.FLAGS.config is None:
        raise app.UsageError("--config is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    f = flags.FLAGS
    distributed.maybe_initialize(f.coordinator_address, f.num_processes, f.process_id)
    summary = train(flags.FLAGS.config, progress=flags.FLAGS.progress)
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]", lock_config=True)
    flags.DEFINE_boolean("progress", True, "show a progress bar")
    flags.DEFINE_string("coordinator_address", None, "multi-process: host:port of process 0 (else "
                        "COSMOS_JAX_COORDINATOR, or Slurm auto-detection)")
    flags.DEFINE_integer("num_processes", None, "multi-process: number of processes")
    flags.DEFINE_integer("process_id", None, "multi-process: this process's index")
    app.run(main)
