"""What the training loop does at each save besides checkpointing: the validation loss on held-out windows (fixed
sigma grid, fixed noise; regular and EMA weights) and view-extension samples from the EMA weights, scored for
cross-view consistency (the held-out clip's rig calibration) and fidelity to the real views (cosmos_jax/quality.py)."""

from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from cosmos_jax import offload, quality, sharding
from cosmos_jax import step as step_lib
from cosmos_jax.data import dataset
from cosmos_jax.diffusion import conditioning
from cosmos_jax.samples import ViewExtender, write_comparison

log = logging.getLogger(__name__)


def heldout_dir(config) -> str:
    d = config.data.get("val_dataset_dir", "") or ""
    if d:
        return d
    sub = os.path.join(config.data.dataset_dir, "heldout")
    return sub if os.path.isdir(os.path.join(sub, "videos")) else config.data.dataset_dir


class Validator:
    @classmethod
    def maybe(cls, config, *args) -> Validator | None:
        """A validator, or None (logged) when there are no held-out videos to validate on."""
        d = heldout_dir(config)
        if not os.path.isdir(os.path.join(d, "videos")):
            log.warning("no held-out videos under %s: validation loss and samples are off", d)
            return None
        return cls(config, *args)

    def __init__(self, config, graphdef, tokenizer, step_cfg, mesh, job_dir: str):
        self.config, self.graphdef, self.tokenizer, self.step_cfg = config, graphdef, tokenizer, step_cfg
        self.samples_dir = os.path.join(job_dir, "samples")
        spec = dataset.DataSpec.from_config(config, dataset_dir=heldout_dir(config))
        self.source = dataset.MultiviewWindows(spec)
        self.view_names = [spec.view_keys[i] for i in range(spec.num_views)]
        sample = self.source.load_window(0, np.arange(spec.num_views))
        self.real_video = sample["video"]  # V F H W 3
        self.rig = self._rig(heldout_dir(config), self.source.windows[0][0])
        self.quality_frames = int(config.samples.quality_frames)
        self.fps = float(sample["fps"])
        rep = sharding.replicated(mesh)
        keys = ("video", "text", "view_idx", "fps", "frame_repeat")
        self.batch = {k: jax.device_put(np.asarray(sample[k])[None], rep) for k in keys}
        self._loss = jax.jit(functools.partial(step_lib.val_loss, graphdef=graphdef, cfg=step_cfg,
                                               tokenizer=tokenizer))
        self.extender = ViewExtender(graphdef, step_cfg.sigma_data, config.diffusion.sigma_min,
                                     config.diffusion.sigma_max)

    def losses(self, state) -> dict:
        ema = offload.to_device(state["ema"])  # a host-resident EMA (config.offload) is read on the device
        return {"val_loss": float(self._loss(state["params"], state["buffers"], self.batch)),
                "val_loss_ema": float(self._loss(ema, state["buffers"], self.batch))}

    @staticmethod
    def _rig(dataset_dir: str, clip: str) -> dict:
        try:
            return quality.load_rig(dataset_dir, clip)
        except FileNotFoundError as e:
            log.warning("%s: the samples are scored for fidelity only", e)
            return {"cameras": {}}

    def quality(self, gen_VFHW3: np.ndarray) -> dict:
        """Cross-view consistency and fidelity of generated views (cosmos_jax/quality.py), flat for the metric
        writer: xview_* (pairs pooled) and psnr_db / ssim (the generated views against the real held-out ones)."""
        gen = dict(zip(self.view_names, gen_VFHW3, strict=True))
        real = dict(zip(self.view_names, self.real_video, strict=True))
        s = quality.score(gen, self.rig, real, self.quality_frames)["summary"]
        out = {f"xview_{k}": v for k, v in s.items() if k in ("sampson_median_px", "inlier_fraction", "matches")}
        out.update({k: s[k] for k in ("psnr_db", "ssim") if k in s})
        return out

    def reference_quality(self) -> dict:
        """The same numbers for the real held-out views (the ceiling), for every view = the front view (the trivial
        baseline) and for the real views through the tokenizer (the ceiling behind the tokenizer)."""
        real = dict(zip(self.view_names, self.real_video, strict=True))
        tokenized = sharding.to_host(self.tokenizer.roundtrip(self.batch["video"]))[0]
        tokenized = dict(zip(self.view_names, tokenized, strict=True))
        refs = quality.references(real, self.rig, self.quality_frames, tokenized)
        return {k: v["summary"] for k, v in refs.items()}

    def samples(self, state, step: int) -> tuple[str | None, str | None, dict]:
        """(grid mp4, sheet png, the views' scores) of the EMA weights' view extension of the held-out window."""
        s = self.config.samples
        gt = step_lib.latents_of(self.batch, self.tokenizer)
        b, v, t = gt.shape[:3]
        indicator = jnp.broadcast_to(conditioning.condition_indicator("first_cam", v, t), (b, v, t))
        cond = step_lib.condition_of(self.batch, self.batch["text"], indicator)
        lat = self.extender.generate(offload.to_device(state["ema"]), state["buffers"], cond, gt, indicator,
                                     jax.random.key(self.config.seed + 1), s.num_steps, s.guidance)
        gen = sharding.to_host(self.tokenizer.decode(lat))[0]
        if jax.process_index() != 0:
            return None, None, {}
        mp4, png = write_comparison(self.samples_dir, f"iter_{step:09d}", self.real_video, gen, self.view_names,
                                    self.fps)
        return mp4, png, self.quality(gen)
