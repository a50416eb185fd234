"""Generation from a trained network (view extension) and the pictures made of it.

`ViewExtender` runs upstream's sampler with the weights closed over in one jitted Euler step: the condition views
(the front by default) stay clean, the others are generated, guidance runs the conditional and text-zeroed passes
as one batch. Used by the training loop's validation samples and by `python -m cosmos_jax.generate`.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from cosmos_jax.diffusion import denoise as dn
from cosmos_jax.diffusion import sampler


class ViewExtender:
    def __init__(self, graphdef, sigma_data: float = 0.5, sigma_min: float = 0.0002, sigma_max: float = 80.0):
        self.graphdef, self.sigma_data = graphdef, sigma_data
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self._step = jax.jit(functools.partial(self._euler, graphdef=graphdef, sigma_data=sigma_data))

    @staticmethod
    def _euler(params, buffers, cond: dn.Condition, x, sigma, sigma_next, gt, indicator, aug_noise, guidance,
               augment_sigma, *, graphdef, sigma_data):
        model = nnx.merge(graphdef, params, buffers)
        both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), cond, dn.uncond(cond))

        def network(x_in, c_noise_B):
            out = model.net(jnp.concatenate([x_in, x_in]), jnp.concatenate([c_noise_B, c_noise_B]),
                            both.text_BVSE, both.input_mask_BVT, both.view_idx_BVT, both.fps_B,
                            both.frame_repeat_BV, both.padding_mask_BHW)
            return jnp.split(out, 2)

        return sampler.euler_step(network, x, sigma, sigma_next, gt, indicator, guidance, aug_noise, augment_sigma,
                                  sigma_data)

    def generate(self, params, buffers, cond: dn.Condition, gt_latent, indicator_BVT, key, num_steps: int = 35,
                 guidance: float = 7.0, augment_sigma: float = 0.0, callback=None):
        """Latents [B, V, T, h, w, C]: the indicated region equals `gt_latent`, the rest is generated."""
        def step_fn(x, sigma, sigma_next, aug_noise):
            return self._step(params, buffers, cond, x, sigma, sigma_next, gt_latent, indicator_BVT, aug_noise,
                              jnp.float32(guidance), jnp.float32(augment_sigma))

        return sampler.sample(None, key, gt_latent, indicator_BVT, guidance, num_steps, self.sigma_min,
                              self.sigma_max, augment_sigma, self.sigma_data, step_fn=step_fn, callback=callback)


def label(img: np.ndarray, text: str) -> np.ndarray:
    """A thin caption bar above an image (PIL's built-in font)."""
    from PIL import ImageDraw

    bar = Image.new("RGB", (img.shape[1], 12), (0, 0, 0))
    ImageDraw.Draw(bar).text((2, 0), text[: max(1, img.shape[1] // 6)], fill=(255, 255, 255))
    return np.concatenate([np.asarray(bar), img], axis=0)


def grid_frames(rows: list[list[np.ndarray]]) -> np.ndarray:
    """rows of per-view videos [F, H, W, 3] -> one video [F, rows*H, cols*W, 3] (sizes must agree)."""
    return np.concatenate([np.concatenate(r, axis=2) for r in rows], axis=1)


def write_grid_mp4(path: str, rows: list[list[np.ndarray]], fps: float) -> np.ndarray:
    """`grid_frames(rows)` cropped to even sizes (H.264) and written to `path`; returns the grid video."""
    from cosmos_jax.data import video as video_io  # PyAV only where videos are written

    grid = grid_frames(rows)
    grid = grid[:, : grid.shape[1] // 2 * 2, : grid.shape[2] // 2 * 2]
    video_io.write_mp4(path, grid, fps=fps)
    return grid


def write_comparison(out_dir: str, stem: str, real_VFHW3: np.ndarray, gen_VFHW3: np.ndarray, view_names,
                     fps: float, cond_views=(0,)) -> tuple[str, str]:
    """`<stem>_grid.mp4` (top row generated, bottom row real) and `<stem>_sheet.png` (one row per sampled time
    step, generated and real views side by side)."""
    os.makedirs(out_dir, exist_ok=True)
    tag = lambda i, n, kind: f"{n.removeprefix('pinhole_')} {'cond' if i in cond_views and kind == 'gen' else kind}"  # noqa: E731
    gen_rows = [np.stack([label(f, tag(i, n, "gen")) for f in g]) for i, (g, n) in
                enumerate(zip(gen_VFHW3, view_names, strict=True))]
    real_rows = [np.stack([label(f, tag(i, n, "real")) for f in r]) for i, (r, n) in
                 enumerate(zip(real_VFHW3, view_names, strict=True))]
    mp4 = os.path.join(out_dir, f"{stem}_grid.mp4")
    write_grid_mp4(mp4, [gen_rows, real_rows], fps)
    f = gen_VFHW3.shape[1]
    times = sorted({0, f // 3, 2 * f // 3, f - 1})
    sheet = np.concatenate([np.concatenate([np.concatenate([gen_rows[v][t], real_rows[v][t]], axis=1)
                                            for v in range(len(view_names))], axis=1) for t in times], axis=0)
    png = os.path.join(out_dir, f"{stem}_sheet.png")
    Image.fromarray(sheet).save(png)
    return mp4, png
