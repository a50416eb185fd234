"""The preconditioned denoiser D(x_t; sigma, condition) around the DiT, shared by training and sampling.

Upstream: training/models/model_image.py::denoise (base) and training/models/extend_model.py::denoise (condition
region). Latents are [B, V, T, H, W, C].
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from cosmos_jax.diffusion import conditioning, edm
from cosmos_jax.models.dit import DiffusionNet


class Condition(NamedTuple):
    """Everything the network sees besides x_t and sigma."""

    text_BVSE: jax.Array  # T5 embeddings, 512 tokens per view, zero padded
    view_idx_BVT: jax.Array  # rows of the view-embedding table per latent frame
    fps_B: jax.Array
    frame_repeat_BV: jax.Array  # already divided by 10
    input_mask_BVT: jax.Array  # the condition-mask input channel (0 everywhere when video_cond_bool is False)
    padding_mask_BHW: jax.Array | None = None


def network(model: DiffusionNet, x_t, sigma_B, cond: Condition):
    """Raw network output F(c_in(sigma) x_t; c_noise(sigma), condition)."""
    return model.net(edm.scale_input(x_t, sigma_B), edm.c_noise(sigma_B), cond.text_BVSE, cond.input_mask_BVT,
                     cond.view_idx_BVT, cond.fps_B, cond.frame_repeat_BV, cond.padding_mask_BHW)


class Prediction(NamedTuple):
    x0: jax.Array
    eps: jax.Array
    logvar_B: jax.Array


def denoise(model: DiffusionNet, x_t, sigma_B, cond: Condition, sigma_data: float = edm.SIGMA_DATA) -> Prediction:
    """Base EDM denoiser: x0 = c_skip x_t + c_out F, eps = (x_t - x0) / sigma, logvar(c_noise)."""
    x0 = edm.precondition(network(model, x_t, sigma_B, cond), x_t, sigma_B, sigma_data)
    eps = (x_t - x0) / sigma_B.reshape(-1, *(1,) * (x_t.ndim - 1))
    return Prediction(x0, eps, model.logvar(edm.c_noise(sigma_B)))


def denoise_with_condition(model: DiffusionNet, x_t, sigma_B, cond: Condition, indicator_BVT, gt_latent,
                           augmented_latent, sigma_data: float = edm.SIGMA_DATA) -> Prediction:
    """View-extension denoiser (training): the condition region of the input is the augmented ground truth, and
    the condition region of x0 is replaced by the ground truth (compute_loss_for_condition_region False), so it
    contributes zero error while still counted in the loss mean."""
    new_x_t = conditioning.compose(indicator_BVT, augmented_latent, x_t)
    base = denoise(model, new_x_t, sigma_B, cond, sigma_data)
    x0 = conditioning.compose(indicator_BVT, gt_latent, base.x0)
    eps = (x_t - x0) / sigma_B.reshape(-1, *(1,) * (x_t.ndim - 1))
    return Prediction(x0, eps, base.logvar_B)


def uncond(cond: Condition) -> Condition:
    """The classifier-free-guidance negative: text zeroed, video condition kept (upstream sampling)."""
    return cond._replace(text_BVSE=jnp.zeros_like(cond.text_BVSE))
