"""Position and noise-level embeddings of the Cosmos DiT, as pure functions.

Upstream: cosmos_predict1/diffusion/training/module/position_embedding.py (MultiviewVideoRopePosition3DEmb,
MultiviewSinCosPosEmbAxis) and module/blocks.py (Timesteps, FourierFeatures). Every table restarts per view:
views are stacked on the time axis upstream, and time positions begin again at 0 in each view.

Shape legend: B batch, V views, T latent frames per view, H/W patch grid, L = V*T*H*W tokens, K head dim,
D model width.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def axis_split(dim: int) -> tuple[int, int, int]:
    """(dim_t, dim_h, dim_w) with dim_h = dim_w = (dim // 6) * 2 and dim_t the rest (upstream's split)."""
    dim_h = dim // 6 * 2
    return dim - 2 * dim_h, dim_h, dim_h


def ntk_theta(ratio: float, dim: int, base: float = 10000.0) -> float:
    """NTK-aware RoPE base: theta = base * ratio^(dim / (dim - 2))."""
    return base * float(ratio) ** (dim / (dim - 2))


def rope3d_angles(num_views: int, t: int, h: int, w: int, fps_B: jax.Array, head_dim: int,
                  ratios: tuple[float, float, float], base_fps: float = 24.0) -> jax.Array:
    """RoPE angles [B, L, K]: cat([t, h, w] half-angles) twice, non-interleaved (rotate-half) layout.

    Time positions are arange(T) / fps * base_fps; the same table is repeated for every view.
    ratios = (t, h, w) extrapolation ratios.
    """
    dim_t, dim_h, dim_w = axis_split(head_dim)

    def freqs(dim, ratio):
        rng = jnp.arange(0, dim, 2, dtype=jnp.float32)[: dim // 2] / dim
        return 1.0 / (jnp.float32(ntk_theta(ratio, dim)) ** rng)

    seq_t = jnp.arange(t, dtype=jnp.float32)
    pos_t_BT = seq_t[None, :] / fps_B.astype(jnp.float32)[:, None] * base_fps
    ang_t_BTk = pos_t_BT[..., None] * freqs(dim_t, ratios[0])[None, None, :]
    ang_h_Hk = jnp.arange(h, dtype=jnp.float32)[:, None] * freqs(dim_h, ratios[1])[None, :]
    ang_w_Wk = jnp.arange(w, dtype=jnp.float32)[:, None] * freqs(dim_w, ratios[2])[None, :]
    b = fps_B.shape[0]
    half_BTHWk = jnp.concatenate([
        jnp.broadcast_to(ang_t_BTk[:, :, None, None, :], (b, t, h, w, dim_t // 2)),
        jnp.broadcast_to(ang_h_Hk[None, None, :, None, :], (b, t, h, w, dim_h // 2)),
        jnp.broadcast_to(ang_w_Wk[None, None, None, :, :], (b, t, h, w, dim_w // 2)),
    ], axis=-1)
    full_BTHWK = jnp.concatenate([half_BTHWk, half_BTHWk], axis=-1)
    full_BVTHWK = jnp.broadcast_to(full_BTHWK[:, None], (b, num_views, t, h, w, head_dim))
    return full_BVTHWK.reshape(b, num_views * t * h * w, head_dim)


def apply_rope(x_BLNK: jax.Array, cos_BL1K: jax.Array, sin_BL1K: jax.Array) -> jax.Array:
    """Rotate-half RoPE (Transformer Engine `apply_rotary_pos_emb`, non-interleaved), in fp32."""
    x = x_BLNK.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x * cos_BL1K + rotated * sin_BL1K).astype(x_BLNK.dtype)


def _sincos_1d(dim: int, length: int, ratio: float) -> np.ndarray:
    """[length, dim] = [sin | cos] of positions arange(length)/ratio, omega_i = 1/10000^(i/(dim/2)); float64."""
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    pos = np.arange(length, dtype=np.float64) / ratio
    out = np.einsum("m,d->md", pos, omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def extra_sincos_embedding(num_views: int, t: int, h: int, w: int, dim: int,
                           ratios: tuple[float, float, float]) -> jax.Array:
    """The per-block absolute embedding [1, L, D]: cat([t, h, w]) 1-D sin/cos tables, repeated per view.

    The three small tables are computed in float64 (as upstream's numpy) and broadcast on device, so no
    [L, D] constant is baked into the program.
    """
    dim_t, dim_h, dim_w = axis_split(dim)
    tab_t = jnp.asarray(_sincos_1d(dim_t, t, ratios[0]), jnp.float32)
    tab_h = jnp.asarray(_sincos_1d(dim_h, h, ratios[1]), jnp.float32)
    tab_w = jnp.asarray(_sincos_1d(dim_w, w, ratios[2]), jnp.float32)
    emb_THWD = jnp.concatenate([
        jnp.broadcast_to(tab_t[:, None, None, :], (t, h, w, dim_t)),
        jnp.broadcast_to(tab_h[None, :, None, :], (t, h, w, dim_h)),
        jnp.broadcast_to(tab_w[None, None, :, :], (t, h, w, dim_w)),
    ], axis=-1)
    emb_VTHWD = jnp.broadcast_to(emb_THWD[None], (num_views, t, h, w, dim))
    return emb_VTHWD.reshape(1, num_views * t * h * w, dim)


def timestep_sinusoid(c_noise_B: jax.Array, dim: int) -> jax.Array:
    """Upstream `Timesteps`: [cos | sin] of c_noise * exp(-ln(10000) * i / (dim/2)), fp32 [B, dim]."""
    half = dim // 2
    exponent = -math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half
    arg = c_noise_B.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    return jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=-1)


def fourier_features(x_B: jax.Array, freqs: jax.Array, phases: jax.Array, normalize: bool = True) -> jax.Array:
    """Upstream `FourierFeatures` (EDM2): cos(x * freqs + phases) * sqrt(2), fp32 [B, C]."""
    gain = math.sqrt(2.0) if normalize else 1.0
    arg = x_B.astype(jnp.float32)[:, None] * freqs.astype(jnp.float32)[None] + phases.astype(jnp.float32)[None]
    return jnp.cos(arg) * gain
