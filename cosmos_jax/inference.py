"""View extension with a trained network (loaded by cosmos_jax/weights/dit.py's `load` from any of our checkpoint
forms): build upstream's inference condition, sample, decode. Used by `python -m cosmos_jax.generate`.

Upstream (docs/upstream.md §8): the front view is the clean condition (`first_cam`); Video2World also pins the
first latent frames of every view (`first_cam_and_first_n`, from the last 1 or 9 frames of an initial video);
the views, their embedding rows and frame repeat come from a `rig.Rig` (cosmos_jax/rig.py); guidance
F = F_c + g (F_c - F_u) on the raw output, F_u with the text zeroed.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from cosmos_jax import sharding
from cosmos_jax.diffusion import conditioning
from cosmos_jax.diffusion import denoise as dn
from cosmos_jax.rig import Rig
from cosmos_jax.samples import ViewExtender
from cosmos_jax.weights import dit


def on_context_mesh(loaded: dit.Loaded, context: int) -> tuple[dit.Loaded, jax.sharding.Mesh]:
    """The weights replicated on the first `context` devices and a mesh that splits each sample's tokens over them
    (Ulysses attention): run `view_extend` under `sharding.activate(mesh)`. For 6 views (110,592 tokens) of the 7B."""
    if context < 1 or context > jax.device_count():
        raise ValueError(f"--context={context}: expected 1 .. {jax.device_count()} (the devices present)")
    mesh = sharding.make_mesh((("data", 1), ("fsdp", 1), ("context", context)), devices=jax.devices()[:context])
    rep = sharding.replicated(mesh)
    put = lambda t: jax.tree.map(lambda a: jax.device_put(a, rep), t)  # noqa: E731
    return dataclasses.replace(loaded, params=put(loaded.params), buffers=put(loaded.buffers)), mesh


def view_extend(loaded: dit.Loaded, tokenizer, front_video_FHW3: np.ndarray, text_VSE: np.ndarray, rig: Rig,
                fps: float, key, num_steps: int = 35, guidance: float = 7.0, initial_VFHW3: np.ndarray | None = None,
                num_condition_t: int = 0, callback=None) -> tuple[np.ndarray, np.ndarray]:
    """(generated pixels uint8 [V, F, H, W, 3], condition latents [1, V, T, h, w, C])."""
    v = len(rig.names)
    f, h, w, _ = front_video_FHW3.shape
    video = np.zeros((1, v, f, h, w, 3), np.uint8)
    video[0, 0] = front_video_FHW3
    if initial_VFHW3 is not None:
        video[0, 1:, : initial_VFHW3.shape[1]] = initial_VFHW3[1:]
    gt = tokenizer.encode(jnp.asarray(video))
    t = gt.shape[2]
    if initial_VFHW3 is not None and num_condition_t:
        # Views other than the front carry only their first latent frames (encoded with zero padding, upstream).
        location = "first_cam_and_first_n"
    else:
        location, num_condition_t = "first_cam", 0
    indicator = conditioning.condition_indicator(location, v, t, num_condition_t)[None]
    gt = gt * jnp.broadcast_to(indicator[..., None, None, None], gt.shape)  # only the condition region is known
    cond = dn.Condition(
        text_BVSE=jnp.asarray(text_VSE, jnp.float32)[None],
        view_idx_BVT=jnp.broadcast_to(jnp.asarray(rig.rows, jnp.int32)[None, :, None], (1, v, t)),
        fps_B=jnp.full((1,), fps, jnp.float32), frame_repeat_BV=jnp.asarray(rig.repeat, jnp.float32)[None] / 10.0,
        input_mask_BVT=indicator)
    extender = ViewExtender(loaded.graphdef, float(loaded.config.diffusion.sigma_data),
                            float(loaded.config.diffusion.sigma_min), float(loaded.config.diffusion.sigma_max))
    lat = extender.generate(loaded.params, loaded.buffers, cond, gt, indicator, key, num_steps, guidance,
                            callback=callback)
    return sharding.to_host(tokenizer.decode(lat))[0], np.asarray(gt)
