"""EDM (Karras et al. 2022, "Elucidating the Design Space...") as small pure functions, in fp32.

Upstream: cosmos_predict1/diffusion/modules/denoiser_scaling.py (EDMScaling), training/models/model_image.py
(denoise, loss), training/modules/edm_sde.py. Equation numbers refer to the EDM paper, Table 1 and §5.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SIGMA_DATA = 0.5


def c_skip(sigma, sigma_data: float = SIGMA_DATA):
    """Skip scaling sigma_d^2 / (sigma^2 + sigma_d^2) (Table 1, "Network and preconditioning")."""
    return sigma_data**2 / (sigma**2 + sigma_data**2)


def c_out(sigma, sigma_data: float = SIGMA_DATA):
    """Output scaling sigma * sigma_d / sqrt(sigma^2 + sigma_d^2) (Table 1)."""
    return sigma * sigma_data / jnp.sqrt(sigma**2 + sigma_data**2)


def c_in(sigma, sigma_data: float = SIGMA_DATA):
    """Input scaling 1 / sqrt(sigma^2 + sigma_d^2) (Table 1)."""
    return 1.0 / jnp.sqrt(sigma**2 + sigma_data**2)


def c_noise(sigma):
    """Noise conditioning 0.25 ln(sigma) (Table 1)."""
    return 0.25 * jnp.log(sigma)


def loss_weight(sigma, sigma_data: float = SIGMA_DATA):
    """lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma * sigma_d)^2 (Table 1, "Training"); 2/sigma_d^2 at sigma_d."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_sigma(key: jax.Array, shape, p_mean: float = 0.0, p_std: float = 1.0):
    """ln sigma ~ N(P_mean, P_std^2), one sigma per sample, no clipping (Table 1, "Training")."""
    return jnp.exp(p_mean + p_std * jax.random.normal(key, shape, jnp.float32))


def _bcast(v_B, x):
    return v_B.reshape(v_B.shape + (1,) * (x.ndim - v_B.ndim))


def precondition(f_x, x_t, sigma_B, sigma_data: float = SIGMA_DATA):
    """D(x_t; sigma) = c_skip * x_t + c_out * F (Eq. 7); sigma is per sample [B]."""
    return _bcast(c_skip(sigma_B, sigma_data), x_t) * x_t + _bcast(c_out(sigma_B, sigma_data), x_t) * f_x


def scale_input(x_t, sigma_B, sigma_data: float = SIGMA_DATA):
    """The network input c_in(sigma) * x_t."""
    return _bcast(c_in(sigma_B, sigma_data), x_t) * x_t


def unprecondition(x0, x_t, sigma_B, sigma_data: float = SIGMA_DATA):
    """The raw output F that makes D(x_t; sigma) = x0: (x0 - c_skip x_t) / c_out (upstream
    `_reverse_precondition_output`, used to pin the condition region while sampling)."""
    return (x0 - _bcast(c_skip(sigma_B, sigma_data), x_t) * x_t) / _bcast(c_out(sigma_B, sigma_data), x_t)


def kendall_loss(x0, x0_pred, sigma_B, logvar_B, sigma_data: float = SIGMA_DATA, add_logvar: bool = True):
    """Mean over all elements of w(sigma)(x0 - x0_pred)^2 exp(-logvar) + logvar (EDM2 Eq. 21's uncertainty
    weighting, as upstream `loss_add_logvar`); without logvar the plain weighted MSE. Returns (loss, weighted mse)."""
    mse = _bcast(loss_weight(sigma_B, sigma_data), x0) * jnp.square(x0.astype(jnp.float32) - x0_pred)
    if not add_logvar:
        return jnp.mean(mse), jnp.mean(mse)
    lv = _bcast(logvar_B, x0)
    return jnp.mean(mse * jnp.exp(-lv) + lv), jnp.mean(mse)
