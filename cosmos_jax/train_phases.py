"""The train loop's phases other than the step: the frozen base's identity, the compiled step's memory, and at each save
the checkpoint, the `.pt` export and validation, each logged at INFO with its seconds and sizes.

Saves never leave a partial file: Orbax writes a temporary folder and renames it; the `.pt` writer writes a
temporary file and renames it. The free space is checked before each of them; a failure stops the run at once with
a SaveError naming the folder, the bytes needed and the last complete checkpoint.
"""

from __future__ import annotations

import logging
import os
import time

import jax

from cosmos_jax import lora, sharding
from cosmos_jax.utils import memory
from cosmos_jax.weights import checkpoint, export, folder, tree

log = logging.getLogger("cosmos_jax.train")


def base_id(config) -> dict:
    """What a LoRA job's frozen base is made of, stored with each checkpoint and checked on resume."""
    path = config.checkpoint.load_path
    if not path:
        return {"random_init_seed": int(config.seed)}
    out = {"load_path": path}
    if folder.MARKER.marked(path):
        out["meta_mtime_ns"] = os.stat(folder.MARKER.path(path)).st_mtime_ns
    return out


def log_compiled(compiled, seconds: float) -> None:
    ma = compiled.memory_analysis()
    if ma is None:
        log.info("train step compiled in %.1f s", seconds)
        return
    gb = lambda n: n / 2**30  # noqa: E731
    host = getattr(ma, "host_argument_size_in_bytes", 0)
    log.info("train step compiled in %.1f s; per device: arguments %.2f GiB, outputs %.2f GiB (aliased %.2f), "
             "temporaries %.2f GiB, code %.2f GiB%s", seconds, gb(ma.argument_size_in_bytes),
             gb(ma.output_size_in_bytes), gb(ma.alias_size_in_bytes), gb(ma.temp_size_in_bytes),
             gb(ma.generated_code_size_in_bytes),
             f"; in host memory (config.offload): arguments {gb(host):.2f} GiB, temporaries "
             f"{gb(getattr(ma, 'host_temp_size_in_bytes', 0)):.2f} GiB" if host else "")


class Phases:
    """Save, export and validation at a save step; `seconds` keeps each phase's last duration."""

    def __init__(self, config, cfg_dit, ckpt: checkpoint.Manager, validator, writer, out_dir: str, lora_job: bool):
        self.config, self.cfg, self.ckpt, self.validator, self.writer = config, cfg_dit, ckpt, validator, writer
        self.out_dir, self.lora_job = out_dir, lora_job
        self.seconds: dict[str, list[float]] = {}

    def took(self, name: str, t0: float) -> float:
        dt = time.time() - t0
        self.seconds.setdefault(name, []).append(round(dt, 2))
        return dt

    def save(self, state, step: int, data_state: dict, meta: dict) -> None:
        t = time.time()
        nbytes = self.ckpt.save(step, checkpoint.saved_part(state, self.lora_job), data_state, meta)
        log.info("step %d: checkpoint of %.2f GB started in %.1f s (written in the background) -> %s", step,
                 nbytes / 1e9, self.took("save_s", t), self.ckpt.directory)

    def export(self, state, step: int) -> None:
        """Reg (bf16) + EMA (fp32) `.pt` in upstream's layout, keeping the newest
        `checkpoint.export_max_to_keep` (default: `checkpoint.max_to_keep`); LoRA adapters also alone."""
        c = self.config.checkpoint
        keep = c.get("export_max_to_keep", None) or c.max_to_keep
        t, rss0 = time.time(), memory.rss_gb()
        reset = memory.reset_peak_rss()
        needed = export.pt_export_nbytes(state, self.cfg.num_blocks)
        scale = lora.scale(self.cfg.lora_rank, self.cfg.lora_alpha)
        try:
            if jax.process_index() == 0:
                os.makedirs(self.out_dir, exist_ok=True)
                for p in checkpoint.prune_exports(self.out_dir, keep):
                    log.info("removed %s (checkpoint.export_max_to_keep=%d)", p, keep)
                checkpoint.ensure_space(self.out_dir, needed, f"the .pt export of step {step}",
                                        checkpoint.last_checkpoint_advice(self.ckpt.last_complete()),
                                        checkpoint.SaveError)
            export.export_pt(state, self.cfg.num_blocks, self.out_dir, step, lora_scale=scale)
            if self.cfg.lora_rank:
                adapters = tree.flat(sharding.to_host(state["params"]))
                if jax.process_index() == 0:
                    export.export_adapters(adapters, self.cfg.num_blocks,
                                           os.path.join(self.out_dir, f"iter_{step:09d}_lora"), self.cfg.lora_rank,
                                           self.cfg.lora_alpha, self.cfg.lora_targets)
        except checkpoint.SaveError:
            self.ckpt.wait()  # the Orbax checkpoint of this step completes (or its own failure is raised)
            raise
        except OSError as e:
            self.ckpt.wait()  # the Orbax checkpoint of this step completes (or its own failure is raised)
            raise checkpoint.SaveError(
                f"the .pt export of step {step} to {self.out_dir} failed ({needed / 1e9:.2f} GB needed, "
                f"{checkpoint.free_bytes(self.out_dir) / 1e9:.2f} GB free): {e}; no partial file was left; the "
                f"Orbax checkpoint of step {step} is complete: python -m converters.orbax_to_pt --src "
                f"{os.path.dirname(self.out_dir)} --step {step} --dst DIR writes the files again") from e
        dt = self.took("export_s", t)
        growth = memory.peak_rss_gb() - rss0 if reset and rss0 is not None else None
        if growth is not None:
            self.seconds.setdefault("export_rss_growth_gb", []).append(round(growth, 3))
        log.info("step %d: exported reg (bf16) + EMA (fp32) .pt, %.2f GB in %.1f s (%.2f GB/s, host memory +%s) "
                 "-> %s", step, needed / 1e9, dt, needed / 1e9 / max(dt, 1e-9),
                 "?" if growth is None else f"{growth:.2f} GiB", self.out_dir)

    def validate(self, state, step: int, with_samples: bool = True) -> dict:
        t = time.time()
        out = self.validator.losses(state)
        log.info("step %d: val_loss %.4f (EMA %.4f) in %.1f s", step, out["val_loss"], out["val_loss_ema"],
                 self.took("validation_s", t))
        if with_samples and self.config.samples.enabled:  # every process samples (sharded), process 0 writes
            t = time.time()
            mp4, png, scores = self.validator.samples(state, step)
            log.info("step %d: samples (%d sampler steps) in %.1f s: %s %s", step, self.config.samples.num_steps,
                     self.took("samples_s", t), mp4 or "", png or "")
            if scores:
                log.info("step %d: generated views: cross-view Sampson median %.2f px, inliers %.2f (%d matches), "
                         "PSNR %.2f dB, SSIM %.3f", step, scores.get("xview_sampson_median_px", float("nan")),
                         scores.get("xview_inlier_fraction", float("nan")), scores.get("xview_matches", 0),
                         scores.get("psnr_db", float("nan")), scores.get("ssim", float("nan")))
            out.update(scores)
        return out
