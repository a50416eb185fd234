"""Single-to-multiview conditioning as pure functions (docs/upstream.md §5.3).

Upstream: cosmos_predict1/diffusion/training/models/extend_model.py (augment_conditional_latent_frames, denoise),
view_extend_model_multiview.py (condition locations), conditioner.py (text dropout). The "indicator" marks latent
frames that are clean condition (1) and those generated (0), per view: [V, T] or [B, V, T].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cosmos_jax.diffusion import edm

TRAIN_LOCATIONS = ("first_cam", "first_cam_and_random_n")


def condition_indicator(location: str, num_views: int, num_t: int, num_condition_t: int | jax.Array = 0) -> jax.Array:
    """The [V, T] condition indicator.

    first_cam:                  every latent frame of view 0 (the front camera).
    first_cam_and_random_n /
    first_cam_and_first_n:      view 0, plus the first n latent frames of every view (clamped to 1).
    fixed_cam_{i}_{j}...:       the listed views.
    fixed_cam_and_first_n_{i}..: the listed views plus the first n frames of every view.
    """
    v_idx = jnp.arange(num_views)[:, None]
    t_idx = jnp.arange(num_t)[None, :]
    first_n = (t_idx < num_condition_t).astype(jnp.float32) * jnp.ones((num_views, 1))
    if location == "first_cam":
        ind = (v_idx == 0) * jnp.ones((1, num_t))
    elif location in ("first_cam_and_random_n", "first_cam_and_first_n"):
        ind = (v_idx == 0) * jnp.ones((1, num_t)) + first_n
    elif location.startswith("fixed_cam_and_first_n_"):
        views = [int(c) for c in location[len("fixed_cam_and_first_n_"):].split("_")]
        ind = jnp.isin(v_idx, jnp.asarray(views)) * jnp.ones((1, num_t)) + first_n
    elif location.startswith("fixed_cam_"):
        views = [int(c) for c in location[len("fixed_cam_"):].split("_")]
        ind = jnp.isin(v_idx, jnp.asarray(views)) * jnp.ones((1, num_t))
    else:
        raise ValueError(f"condition_location={location!r}: expected first_cam, first_cam_and_random_n, "
                         "first_cam_and_first_n, fixed_cam_<ids> or fixed_cam_and_first_n_<ids>")
    return jnp.clip(ind, 0.0, 1.0).astype(jnp.float32)


def sample_num_condition_t(key: jax.Array, batch: int, t_max: int, t_min: int = 0) -> jax.Array:
    """n_B ~ Uniform{t_min, ..., t_max}, one per sample (upstream: torch.randint(t_min, t_max + 1) per GPU, which
    holds one sample)."""
    return jax.random.randint(key, (batch,), t_min, t_max + 1)


def training_indicator(key: jax.Array, location: str, batch: int, num_views: int, num_t: int, t_max: int
                       ) -> jax.Array:
    """The training-time [B, V, T] indicator for the two training locations (random_n: n drawn per sample)."""
    if location not in TRAIN_LOCATIONS:
        raise ValueError(f"conditioning.condition_location={location!r}: training supports {TRAIN_LOCATIONS}")
    if location == "first_cam":
        return jnp.broadcast_to(condition_indicator(location, num_views, num_t), (batch, num_views, num_t))
    n_B = sample_num_condition_t(key, batch, t_max)
    return jax.vmap(lambda n: condition_indicator(location, num_views, num_t, n))(n_B)


def sample_augment_sigma(key: jax.Array, batch: int, p_mean: float = -3.0, p_std: float = 2.0,
                         multiplier: float = 1.0) -> jax.Array:
    """sigma_aug = exp(N(p_mean, p_std^2)) * multiplier per sample ("mostly 0 to 0.3")."""
    return jnp.exp(p_mean + p_std * jax.random.normal(key, (batch,), jnp.float32)) * multiplier


def augment_condition(gt_latent, noise, sigma_aug_B, sigma_B, sigma_data: float = edm.SIGMA_DATA):
    """Upstream `noise_with_sigma`: (gt + sigma_aug * n) * c_in(sigma_aug) / c_in(sigma).

    After the global c_in(sigma) the network thus sees c_in(sigma_aug) * (gt + sigma_aug * n) in the condition
    region. sigma_aug is not given to the network (condition_on_augment_sigma False).
    """
    b = lambda v: v.reshape(v.shape + (1,) * (gt_latent.ndim - 1))  # noqa: E731
    aug = gt_latent + b(sigma_aug_B) * noise
    return aug * b(edm.c_in(sigma_aug_B, sigma_data) / edm.c_in(sigma_B, sigma_data))


def compose(indicator_BVT, condition_latent, x_t):
    """indicator * condition + (1 - indicator) * x_t for latents [B, V, T, H, W, C]."""
    ind = indicator_BVT[..., None, None, None]
    return ind * condition_latent + (1 - ind) * x_t


def text_dropout(key: jax.Array, text_BVSE: jax.Array, rate: float) -> jax.Array:
    """Classifier-free-guidance dropout: each sample's whole [V, S, E] text tensor zeroed with probability rate."""
    keep_B = jax.random.bernoulli(key, 1.0 - rate, (text_BVSE.shape[0],))
    return text_BVSE * keep_B[:, None, None, None].astype(text_BVSE.dtype)
