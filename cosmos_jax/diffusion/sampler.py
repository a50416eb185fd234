"""Upstream's sampler: diffusers `EDMEulerScheduler` (Karras rho = 7, first-order Euler, 35 steps) with
classifier-free guidance on the raw network output and the condition region pinned to the ground truth.

Upstream: cosmos_predict1/diffusion/model/model_view_extend_multiview.py::generate_samples_from_batch and
model_v2w.py::_augment_noise_with_latent. Latents are [B, V, T, H, W, C].
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cosmos_jax.diffusion import conditioning, edm


def karras_sigmas(num_steps: int, sigma_min: float = 0.0002, sigma_max: float = 80.0, rho: float = 7.0) -> np.ndarray:
    """(sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho (EDM Eq. 5), then a final 0.

    float32, as diffusers `set_timesteps` stores them; length num_steps + 1.
    """
    ramp = np.linspace(0, 1, num_steps)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = ((max_inv + ramp * (min_inv - max_inv)) ** rho).astype(np.float32)
    return np.concatenate([sigmas, np.zeros(1, np.float32)])


def init_noise_sigma(sigma_max: float = 80.0) -> float:
    """diffusers EDMEulerScheduler.init_noise_sigma = sqrt(sigma_max^2 + 1)."""
    return float((sigma_max**2 + 1) ** 0.5)


# F(x_in, c_noise_B) -> (F_cond, F_uncond): the network with and without text, x_in = c_in(sigma) * x.
GuidedNetwork = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def euler_step(network: GuidedNetwork, x, sigma, sigma_next, gt_latent, indicator_BVT, guidance: float,
               augment_noise=None, augment_sigma: float = 0.0, sigma_data: float = edm.SIGMA_DATA):
    """One step: pin the condition region, guided F, overwrite F there so x0 = gt, then Euler to sigma_next.

    Returns (x_next, x0). With augment_sigma >= sigma the region is no longer pinned (upstream's trick).
    """
    b = x.shape[0]
    sigma_B = jnp.full((b,), sigma, jnp.float32)
    ind = jnp.where(augment_sigma >= sigma, 0.0, 1.0) * indicator_BVT
    aug_B = jnp.full((b,), augment_sigma, jnp.float32)
    noise = jnp.zeros_like(gt_latent) if augment_noise is None else augment_noise
    cond_latent = conditioning.augment_condition(gt_latent, noise, aug_B, sigma_B, sigma_data)
    new_x = conditioning.compose(ind, cond_latent, x)
    f_cond, f_uncond = network(edm.scale_input(new_x, sigma_B, sigma_data), edm.c_noise(sigma_B))
    f = f_cond + guidance * (f_cond - f_uncond)
    f = conditioning.compose(ind, edm.unprecondition(gt_latent, new_x, sigma_B, sigma_data), f)
    x0 = edm.precondition(f, new_x, sigma_B, sigma_data)
    x_next = new_x + (new_x - x0) / sigma * (sigma_next - sigma)
    return x_next, x0


def sample(network: GuidedNetwork | None, key: jax.Array, gt_latent, indicator_BVT, guidance: float = 7.0,
           num_steps: int = 35, sigma_min: float = 0.0002, sigma_max: float = 80.0, augment_sigma: float = 0.0,
           sigma_data: float = edm.SIGMA_DATA, step_fn=None, callback=None):
    """The whole sampling loop; returns the last step's x0 prediction.

    `step_fn(x, sigma, sigma_next, augment_noise) -> (x_next, x0)` replaces the default `euler_step` over
    `network` (e.g. a jitted step that closes over the weights); `callback(i, n)` runs after every step.
    """
    if step_fn is None:
        def step_fn(x, sigma, sigma_next, aug_noise):
            return euler_step(network, x, sigma, sigma_next, gt_latent, indicator_BVT, guidance, aug_noise,
                              augment_sigma, sigma_data)
    sigmas = karras_sigmas(num_steps, sigma_min, sigma_max)
    k_init, k_aug = jax.random.split(key)
    x = jax.random.normal(k_init, gt_latent.shape, jnp.float32) * init_noise_sigma(sigma_max)
    aug_noise = jax.random.normal(k_aug, gt_latent.shape, jnp.float32)
    x0 = x
    for i in range(num_steps):
        x, x0 = step_fn(x, np.float32(sigmas[i]), np.float32(sigmas[i + 1]), aug_noise)
        if callback is not None:
            callback(i, num_steps)
    return x0
