"""`python -m cosmos_jax.train --config=configs/waymo.py[:t2w|:v2w] [--config.a.b=value ...]`

Post-training of the Single2MultiView DiT. Rerunning the same command resumes the job from its last complete
checkpoint (state, EMA, optimizer and data-iterator position). Sections: checks (config values, rerun against the
saved config, base weights: all before anything is written), mesh, data, state (restore, base weights or fresh),
the jitted step (compiled once, its memory logged), the loop (log, save + export + validation + samples).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

from cosmos_jax import config_check, distributed, flops, job, offload, offload_overlap, optim, sharding
from cosmos_jax import step as step_lib
from cosmos_jax import train_state as ts
from cosmos_jax.data import dataset, pipeline
from cosmos_jax.data.latent_cache import LatentCacheSource
from cosmos_jax.models import build
from cosmos_jax.train_phases import Phases, base_id, log_compiled
from cosmos_jax.utils import memory
from cosmos_jax.utils import metrics as metrics_lib
from cosmos_jax.validation import Validator
from cosmos_jax.weights import checkpoint, dit
from cosmos_jax.weights import tokenizer as tok

log = logging.getLogger("cosmos_jax.train")
STEP_KEYS = ("video", "latents", "text", "view_idx", "fps", "frame_repeat")
job_dir = job.job_dir
# Mistakes of the user's making: the CLI prints their message as one line and exits 1.
USER_ERRORS = (config_check.ConfigError, job.RerunConfigError, dit.WeightsMismatchError,
               checkpoint.SaveError, dataset.BadSampleError, FileNotFoundError)


def _fault(kind: str, step: int) -> None:
    """Test hook: COSMOS_JAX_FAULT=kill_after_step:N or kill_during_save:N ends the process abruptly;
    ctrl_c_after_step:N sends it SIGINT (what Ctrl-C or `timeout -s INT` does)."""
    spec = os.environ.get("COSMOS_JAX_FAULT", "")
    if spec == f"{kind}:{step}":
        sys.stdout.flush()
        if kind.startswith("ctrl_c"):
            os.kill(os.getpid(), signal.SIGINT)
        else:
            os._exit(137)


def global_batch(config, mesh) -> int:
    """The global batch: config.batch_size, or 0 = one sample per data-parallel device (upstream's 1 per GPU).
    config_check.check has refused a batch that is not a multiple of data*fsdp."""
    return config.batch_size or mesh.shape["data"] * mesh.shape["fsdp"]


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def quiet_libraries() -> None:
    """Orbax and grain log every save at INFO through absl; keep their warnings, drop the chatter."""
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("cosmos_jax").setLevel(logging.INFO)


def train(config, progress: bool = True, devices=None) -> dict:
    """Run (or resume) the job on `devices` (default: all); returns the final metrics. Multi-process: call
    `distributed.maybe_initialize` first (the CLI does), then every process runs this."""
    quiet_libraries()
    config = config.copy_and_resolve_references()
    devices = list(devices or jax.devices())
    config_check.check(config, len(devices))
    if config.checkpoint.load_path:
        config.checkpoint.load_path = os.path.abspath(config.checkpoint.load_path)
    mesh = sharding.make_mesh(config.mesh, devices=devices)
    with sharding.activate(mesh):  # the model's activation constraints and Ulysses attention read this mesh
        return _train(config, mesh, progress)


def _train(config, mesh, progress: bool) -> dict:
    # ---- checks before anything is written -----------------------------------------------------------------
    jdir = job.job_dir(config)
    steps = checkpoint.complete_steps(jdir)
    latest = steps[-1] if steps else None
    lora_job = config.lora.rank > 0
    config_dict = job.as_dict(config)
    if latest is not None and (old := job.saved_config(jdir)) is not None:
        job.check_rerun(old, config_dict, jdir, latest)
    if config.checkpoint.load_path and (latest is None or lora_job):
        config_check.check_load_path(config.checkpoint.load_path)
    out_dir = os.path.join(jdir, "checkpoints")
    export_missing = (config.checkpoint.export_pt and latest is not None
                      and latest not in checkpoint.exported_steps(out_dir))
    if latest is not None and latest >= config.max_iter and not export_missing:
        log.info("%s is at step %d (max_iter %d): nothing to do; raise --config.max_iter to train further",
                 jdir, latest, config.max_iter)
        path = os.path.join(jdir, "summary.json")
        return json.load(open(path)) if os.path.isfile(path) else {"job_dir": jdir, "final": {"step": latest}}
    cfg_dit = build.dit_config(config)
    step_cfg = step_lib.StepConfig.from_config(config)
    batch = global_batch(config, mesh)
    tx = optim.make(config)
    graphdef, abstract, shardings = ts.layout(cfg_dit, tx, mesh, config.seed, offload=step_cfg.offload)
    n_train = checkpoint.tree_nbytes(abstract["params"]) // 4
    n_frozen = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract["buffers"]))
    dev = mesh.devices.flat[0]
    log.info("job %s | %s %s | %d device(s) %s, %d process(es), mesh %s | batch %d x grad_accum %d | "
             "%s trainable + %s frozen parameters (%s) | remat %s | data %s | base %s | max_iter %d",
             jdir, config.get("variant", ""), f"LoRA r={config.lora.rank}" if lora_job else "full fine-tune",
             mesh.size, dev.device_kind, jax.process_count(), dict(mesh.shape), batch, config.grad_accum,
             _count(n_train), _count(n_frozen), cfg_dit.dtype, config.remat, config.data.latent_cache or
             config.data.dataset_dir, config.checkpoint.load_path or "random init", config.max_iter)
    # ---- data: each process reads the rows of its data-parallel group(s) ------------------------------------
    spec = dataset.DataSpec.from_config(config)
    tokenizer = tok.from_config(config)
    if config.data.latent_cache:
        source = LatentCacheSource(config.data.latent_cache, spec, tokenizer.norm)
    else:
        source = dataset.MultiviewWindows(spec)
    data_iter = pipeline.make_iterator(source, config.seed, batch, *sharding.data_rank(mesh, batch),
                                       num_threads=config.data.num_workers)
    # ---- the job folder: written only now, after every check ----------------------------------------------
    if jax.process_index() == 0:
        os.makedirs(jdir, exist_ok=True)
        job.write_config(jdir, config_dict, latest)
        if latest is not None:
            if n := job.trim_metrics(jdir, latest):
                log.info("dropped %d metric row(s) written after the checkpoint of step %d", n, latest)
            for p in checkpoint.remove_partial(jdir):
                log.info("removed the partial checkpoint %s of a killed save", p)
    # ---- state: resume, base weights, or fresh -------------------------------------------------------------
    ckpt = checkpoint.Manager(jdir, config.checkpoint.max_to_keep, config.checkpoint.async_save,
                              config.checkpoint.concurrent_gb)
    t0 = time.time()
    if latest is not None:
        base = dit.fresh_state(config, cfg_dit, tx, mesh, abstract, shardings) if lora_job else None
        try:
            restored, data_state, meta = ckpt.restore(latest, checkpoint.saved_part(abstract, lora_job))
        except Exception as e:
            raise job.RerunConfigError(f"{jdir}/orbax/{latest}: cannot be restored onto this config's state "
                                       f"({str(e).splitlines()[0][:300]}); start a new job "
                                       "(--config.job.name=NEW_NAME) or rerun with the job's saved config") from e
        if lora_job and meta.get("base") not in (None, base_id(config)):
            raise job.RerunConfigError(f"{jdir}: the frozen base changed since step {latest} was saved: saved "
                                       f"{meta['base']}, now {base_id(config)}")
        state = {**base, **restored} if lora_job else restored
        data_iter.set_state(data_state)
        state_s = time.time() - t0
        log.info("resumed %s at step %d in %.1f s", jdir, latest, state_s)
    else:
        state = dit.fresh_state(config, cfg_dit, tx, mesh, abstract, shardings)
        state_s = time.time() - t0
        log.info("state built in %.1f s (%s)", state_s,
                 f"base weights {config.checkpoint.load_path}" if config.checkpoint.load_path else "random init")
    # ---- the jitted step -----------------------------------------------------------------------------------
    batch_sh = sharding.batch_sharding(mesh, leading_axes=1)
    flush = None
    if step_cfg.overlap:  # the state carries the last step's update until the next step's forward pass; save,
        # export and validation read offload_overlap.saved(state) after a flush (at the start nothing is pending)
        state = offload_overlap.with_pending(state, shardings)
        flush = offload_overlap.make_flush(shardings, adamw=optim.parts(config)[1], parts=step_cfg.offload)
        shardings = offload_overlap.shardings(shardings)
    train_step = step_lib.jit_train_step(shardings, batch_sh, graphdef=graphdef, tx_parts=optim.parts(config),
                                         cfg=step_cfg, tokenizer=tokenizer)
    schedule = optim.schedule(config)
    validator = Validator.maybe(config, graphdef, tokenizer, step_cfg, mesh, jdir)
    writer = metrics_lib.MetricWriter(jdir, purge_step=None if latest is None else latest + 1)
    phases = Phases(config, cfg_dit, ckpt, validator, writer, out_dir, lora_job)
    phases.seconds["state_s"] = [round(state_s, 2)]
    step_flops = flops.step_flops(cfg_dit, config, batch)
    peak = flops.peak_flops(dev)
    # ---- loop ----------------------------------------------------------------------------------------------
    start = int(jax.device_get(state["step"]))
    if export_missing:
        log.info("step %d: its .pt export was interrupted; writing it now", start)
        phases.export(offload_overlap.saved(state), start)
    base_key = jax.random.key(config.seed)
    bar = tqdm(total=config.max_iter, initial=start, disable=not progress or jax.process_index() > 0,
               desc=config.job.name, dynamic_ncols=True)
    last, skipped, compiled, first_s, t_first, t_last, n_since = {}, 0, None, 0.0, 0.0, 0.0, 0
    if start == 0 and validator and config.samples.enabled:  # the ceiling and the trivial baseline of the scores
        ref = validator.reference_quality()
        writer.write(0, {f"{k}_{m}": v for k, d in ref.items() for m, v in d.items()}, prefix="val_reference")
        log.info("held-out views, for reference: real views Sampson median %.2f px, inliers %.2f; every view = the "
                 "front view: %.2f px, inliers %.2f, PSNR %.2f dB, SSIM %.3f; real views through the tokenizer: "
                 "%.2f px, inliers %.2f, PSNR %.2f dB, SSIM %.3f",
                 ref["real"].get("sampson_median_px", float("nan")), ref["real"].get("inlier_fraction", float("nan")),
                 *(ref[kind].get(k, float("nan")) for kind in ("baseline_front_copy", "real_tokenized")
                   for k in ("sampson_median_px", "inlier_fraction", "psnr_db", "ssim")))
    if start == 0 and validator and config.samples.val_at_start:
        at_start = phases.validate(offload_overlap.saved(state), 0, with_samples=config.samples.samples_at_start)
        writer.write(0, at_start, prefix="val")
    it = start
    try:
        for it in range(start, config.max_iter):
            micro = [next(data_iter) for _ in range(config.grad_accum)]
            skipped += int(sum(int(np.sum(m["skipped"])) for m in micro))
            first_window = int(micro[0]["window"][0])
            host = {k: np.stack([m[k] for m in micro]) for k in STEP_KEYS if k in micro[0]}
            dev_batch, key = sharding.put_batch(host, batch_sh, batch), jax.random.fold_in(base_key, it)
            if compiled is None:
                t0 = time.time()
                compiled = train_step.lower(state, dev_batch, key).compile()
                log_compiled(compiled, phases.took("compile_s", t0))
                t_first = time.time()
            state, m = compiled(state, dev_batch, key)
            if it == start:  # the first step is timed alone: later step times exclude it
                jax.block_until_ready(m)
                first_s = phases.took("first_step_s", t_first)
                peak_dev = memory.peak_device_gb(list(mesh.local_devices))
                log.info("first step (%d) ran in %.1f s%s; host memory %.1f GiB (peak %.1f)", it + 1, first_s,
                         "" if peak_dev is None else f"; peak device memory {peak_dev:.2f} GiB",
                         memory.rss_gb() or 0.0, memory.peak_rss_gb() or 0.0)
                t_last, n_since = time.time(), 0
            else:
                n_since += 1
            _fault("kill_after_step", it + 1)
            _fault("ctrl_c_after_step", it + 1)
            ckpt.check()  # a failed asynchronous save stops the run here, not at the next save
            done = it + 1
            if done % config.log_every == 0 or done == config.max_iter:
                m = {k: float(v) for k, v in jax.device_get(m).items()}
                dt = (time.time() - t_last) / n_since if n_since else first_s
                t_last, n_since = time.time(), 0
                m.update(lr=float(schedule(it)), step_time_s=dt, samples_per_s=batch * config.grad_accum / dt,
                         skipped_samples=skipped, first_window=first_window)
                if peak:
                    m["mfu"] = step_flops / dt / (peak * mesh.size)
                writer.write(done, m)
                last = {"step": done, **m}
                bar.set_postfix(loss=f"{m['loss']:.4f}", gnorm=f"{m['grad_norm']:.3f}")
                if not progress:
                    log.info("step %d/%d loss %.4f grad_norm %.4g lr %.3g | %.2f s/step, %.3f samples/s%s | "
                             "skipped samples %d", done, config.max_iter, m["loss"], m["grad_norm"], m["lr"], dt,
                             m["samples_per_s"], f", MFU {100 * m['mfu']:.1f}%" if peak else "", skipped)
            bar.update(1)
            if done % config.checkpoint.save_iter == 0 or done == config.max_iter:
                if flush:  # the pending update applied first (the next step then has none)
                    state = flush(state)
                settled = offload_overlap.saved(state)
                phases.save(settled, done, data_iter.get_state(), {"seed": config.seed, "step": done,
                                                                   "base": base_id(config) if lora_job else None})
                _fault("kill_during_save", done)
                if config.checkpoint.export_pt:
                    phases.export(settled, done)
                if validator:
                    val = phases.validate(settled, done)
                    writer.write(done, val, prefix="val")
                    last.update(val)
                t_last, n_since = time.time(), 0  # step times exclude the save phases
    except KeyboardInterrupt:
        bar.close()
        ckpt.wait()
        resume = ckpt.last_complete()
        if jax.process_index() == 0:  # the curves of what was trained so far
            _plots(jdir)
        log.warning("interrupted at step %d; the last complete checkpoint is %s: rerun the same command to resume "
                    "from it", it, f"step {resume}" if resume is not None else "none (it starts again from step 0)")
        raise SystemExit(130) from None
    bar.close()
    ckpt.close()
    writer.close()
    summary = {"job_dir": jdir, "final": last, "loss_plot": None, "phases": phases.seconds,
               "peak_device_memory_gb": memory.peak_device_gb(list(mesh.local_devices)),
               "peak_host_rss_gb": memory.peak_rss_gb(since_reset=False)}
    if jax.process_index() == 0:
        summary["loss_plot"], summary["quality_plot"] = _plots(jdir)
        with open(os.path.join(jdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2, default=str)
    return summary


def _plots(jdir: str) -> tuple[str | None, str | None]:
    """loss.png and quality.png of the job's metrics.jsonl (paths, None where there is nothing to plot)."""
    metrics = os.path.join(jdir, "metrics.jsonl")
    return (metrics_lib.plot_losses(metrics, os.path.join(jdir, "loss.png")),
            metrics_lib.plot_quality(metrics, os.path.join(jdir, "quality.png")))


def main(argv):
    del argv
    # JAX's GPU allocator takes 75 % of the card by default; the 7B steps need more (set before first use).
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    if flags.FLAGS.config is None:
        raise app.UsageError("--config is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for line in offload.prepare_backend(flags.FLAGS.config.get("offload")):
        log.info("config.offload: %s", line)
    # SIGINT stops the run cleanly (KeyboardInterrupt: the curves are plotted, the last checkpoint named) even when
    # the process was started with SIGINT ignored, as a shell does for `cmd &` in a script: `kill -INT`, `timeout -s
    # INT` and a scheduler's signal must reach a training started in the background too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    f = flags.FLAGS
    distributed.maybe_initialize(f.coordinator_address, f.num_processes, f.process_id)
    try:
        summary = train(flags.FLAGS.config, progress=flags.FLAGS.progress)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]", lock_config=True)
    flags.DEFINE_boolean("progress", True, "show a progress bar")
    flags.DEFINE_string("coordinator_address", None, "multi-process: host:port of process 0 (else "
                        "COSMOS_JAX_COORDINATOR, or Slurm auto-detection)")
    flags.DEFINE_integer("num_processes", None, "multi-process: number of processes")
    flags.DEFINE_integer("process_id", None, "multi-process: this process's index")
    app.run(main, flags_parser=config_check.parse_flags)
