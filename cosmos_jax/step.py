"""The whole training update in one function, and the fixed-noise validation loss.

train_step, in order: for each of the `grad_accum` micro-batches: tokenizer encode (or cached latents) -> sigma,
noise -> condition indicator (first_cam / first_cam_and_random_n) -> augmented condition latent -> text dropout ->
denoise with the condition region replaced -> Kendall EDM loss -> gradients (summed); then mean over micro-batches
-> force_finite (counted) -> clip 1.0 + AdamW with the warm-up schedule -> power EMA. Batches carry a leading
micro-batch axis A: video uint8 [A, B, V, F, H, W, 3] or latents [A, B, V, T, h, w, C]; text [A, B, V, S, E];
view_idx [A, B, V]; fps [A, B]; frame_repeat [A, B, V].
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from cosmos_jax import ema as ema_lib
from cosmos_jax import offload, offload_overlap, optim
from cosmos_jax.diffusion import conditioning, edm
from cosmos_jax.diffusion import denoise as dn


@dataclasses.dataclass(frozen=True)
class StepConfig:
    sigma_data: float
    p_mean: float
    p_std: float
    loss_add_logvar: bool
    condition_location: str
    random_n_max: int
    augment: bool
    aug_p_mean: float
    aug_p_std: float
    aug_multiplier: float
    text_dropout: float
    force_finite: bool
    ema_enabled: bool
    ema_gamma: float
    offload: tuple[str, ...] = ()
    overlap: bool = False
    prefetch: int = 1
    midblock: bool = False

    @classmethod
    def from_config(cls, c) -> StepConfig:
        cd = c.conditioning
        corruption = cd.apply_corruption_to_condition_region
        if corruption not in ("noise_with_sigma", "none"):
            raise ValueError(f"conditioning.apply_corruption_to_condition_region={corruption!r}: expected "
                             "'noise_with_sigma' or 'none'")
        prefetch, midblock = c.get("offload_prefetch", 1), c.get("offload_midblock_fetch", False)
        return cls(sigma_data=c.diffusion.sigma_data, p_mean=c.diffusion.p_mean, p_std=c.diffusion.p_std,
                   loss_add_logvar=c.diffusion.loss_add_logvar, condition_location=cd.condition_location,
                   random_n_max=cd.first_random_n_num_condition_t_max, augment=corruption == "noise_with_sigma",
                   aug_p_mean=cd.augment_sigma_p_mean, aug_p_std=cd.augment_sigma_p_std,
                   aug_multiplier=cd.augment_sigma_multiplier, text_dropout=cd.text_dropout_rate,
                   force_finite=c.optim.force_finite, ema_enabled=c.ema.enabled,
                   ema_gamma=ema_lib.power_gamma(c.ema.s),
                   offload=offload.check(c.offload, c.model.scan_blocks),
                   overlap=offload_overlap.check(c.get("offload_overlap", False), c.offload, c.grad_accum,
                                                 c.lora.rank > 0, prefetch, midblock, c.remat),
                   prefetch=prefetch, midblock=midblock)


def latents_of(batch, tokenizer):
    """Final latents [B, V, T, h, w, C] of a micro-batch (encoded in the step, no gradient)."""
    if "latents" in batch:
        return batch["latents"].astype(jnp.float32)
    return jax.lax.stop_gradient(tokenizer.encode(batch["video"]))


def condition_of(batch, text, indicator_BVT) -> dn.Condition:
    t = indicator_BVT.shape[-1]
    view_idx_BVT = jnp.broadcast_to(batch["view_idx"][:, :, None], batch["view_idx"].shape + (t,))
    return dn.Condition(text_BVSE=text, view_idx_BVT=view_idx_BVT, fps_B=batch["fps"],
                        frame_repeat_BV=batch["frame_repeat"], input_mask_BVT=indicator_BVT)


def micro_loss(params, buffers, graphdef, batch, key, cfg: StepConfig, tokenizer):
    """The EDM loss of one micro-batch; returns (loss, metrics)."""
    x0 = latents_of(batch, tokenizer)
    b, v, t = x0.shape[:3]
    k_sigma, k_eps, k_n, k_aug_s, k_aug_n, k_drop = jax.random.split(key, 6)
    sigma_B = edm.sample_sigma(k_sigma, (b,), cfg.p_mean, cfg.p_std)
    x_t = x0 + sigma_B[:, None, None, None, None, None] * jax.random.normal(k_eps, x0.shape)
    indicator_BVT = conditioning.training_indicator(k_n, cfg.condition_location, b, v, t, cfg.random_n_max)
    if cfg.augment:
        sigma_aug_B = conditioning.sample_augment_sigma(k_aug_s, b, cfg.aug_p_mean, cfg.aug_p_std,
                                                        cfg.aug_multiplier)
        cond_latent = conditioning.augment_condition(x0, jax.random.normal(k_aug_n, x0.shape), sigma_aug_B,
                                                     sigma_B, cfg.sigma_data)
    else:
        cond_latent = x0
    text = conditioning.text_dropout(k_drop, batch["text"], cfg.text_dropout)
    model = nnx.merge(graphdef, params, buffers)
    pred = dn.denoise_with_condition(model, x_t, sigma_B, condition_of(batch, text, indicator_BVT),
                                     indicator_BVT, x0, cond_latent, cfg.sigma_data)
    loss, mse = edm.kendall_loss(x0, pred.x0, sigma_B, pred.logvar_B, cfg.sigma_data, cfg.loss_add_logvar)
    return loss, {"loss": loss, "edm_mse": mse, "sigma_mean": jnp.mean(sigma_B),
                  "logvar_mean": jnp.mean(pred.logvar_B)}


def train_step(state, batch, key, *, graphdef, tx_parts: tuple[optax.GradientTransformation, ...],
               cfg: StepConfig, tokenizer):
    """One optimizer update over `grad_accum` micro-batches (the leading axis of every batch array).
    `tx_parts` = `optim.parts(config)`: (clip, AdamW), chained on the whole tree, or with `cfg.offload` the clip on
    the whole gradient and AdamW one block at a time (cosmos_jax/offload.py)."""
    params, block_update = state["params"], None
    if cfg.overlap:  # the previous step's update: outside the blocks now, the blocks' inside the forward pass
        params, block_update, rest = offload_overlap.begin(state, adamw=tx_parts[1], parts=cfg.offload,
                                                           ema_enabled=cfg.ema_enabled, prefetch=cfg.prefetch,
                                                           midblock=cfg.midblock)

    def loss_fn(*args):  # micro_loss, and with offload_overlap the blocks' params/moments/EMA after the update
        if block_update is None:
            return micro_loss(*args)
        with offload_overlap.streaming(block_update) as u:
            loss, metrics = micro_loss(*args)
        return loss, (metrics, u.out)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    accum = batch["text"].shape[0]
    keys = jax.random.split(key, accum)

    def micro(grads, xs):
        mb, k = xs
        (_, metrics), g = grad_fn(params, state["buffers"], graphdef, mb, k, cfg, tokenizer)
        return jax.tree.map(jnp.add, grads, g), metrics

    if accum == 1:  # no accumulator: one gradient-sized buffer fewer (7B fp32: 29 GB)
        (_, metrics), grads = grad_fn(params, state["buffers"], graphdef,
                                      jax.tree.map(lambda a: a[0], batch), keys[0], cfg, tokenizer)
        if block_update is not None:
            metrics, block_out = metrics
    else:
        zeros = jax.tree.map(jnp.zeros_like, state["params"])
        grads, metrics = jax.lax.scan(micro, zeros, (batch, keys))
        grads = jax.tree.map(lambda g: g / accum, grads)
        metrics = jax.tree.map(jnp.mean, metrics)
    if cfg.force_finite:
        grads, nonfinite = optim.force_finite(grads)
    else:
        nonfinite = jnp.zeros((), jnp.int32)
    grad_norm = optax.tree.norm(grads)
    beta = ema_lib.power_beta(state["step"], cfg.ema_gamma) if cfg.ema_enabled else None
    extra = {}
    if cfg.overlap:  # this step's update is applied by the next step (or offload_overlap.flush)
        params, opt_state, ema, extra["pending"] = offload_overlap.finish(grads, params, block_out, rest,
                                                                              clip=tx_parts[0], beta=beta)
    elif cfg.offload:  # moments / EMA in host memory: the same update, streamed one block at a time
        clip, adamw = tx_parts
        params, opt_state, ema = offload.update(grads, state["params"], state["opt_state"], state["ema"], clip=clip,
                                                adamw=adamw, ema_beta=beta, parts=cfg.offload)
    else:
        updates, opt_state = optax.chain(*tx_parts).update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        ema = state["ema"] if beta is None else ema_lib.update(state["ema"], params, beta)
    new_state = {**state, "step": state["step"] + 1, "params": params, "opt_state": opt_state, "ema": ema,
                 **extra}
    metrics.update(grad_norm=grad_norm, nonfinite_grads=nonfinite)
    return new_state, metrics


def jit_train_step(state_shardings, batch_sharding, *, graphdef, tx_parts, cfg: StepConfig, tokenizer):
    """`train_step` jitted with the state's shardings in and out and the state donated. Trace and call it under
    `sharding.activate(mesh)`: the model reads the mesh for its activation splits and Ulysses attention."""
    step = functools.partial(train_step, graphdef=graphdef, tx_parts=tuple(tx_parts), cfg=cfg, tokenizer=tokenizer)
    return jax.jit(step, in_shardings=(state_shardings, batch_sharding, None),
                   out_shardings=(state_shardings, None), donate_argnums=(0,))


VAL_SIGMAS = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)


def val_loss(params, buffers, batch, *, graphdef, cfg: StepConfig, tokenizer, seed: int = 1234):
    """EDM-weighted MSE (no logvar) of a micro-batch [B, ...] on the fixed sigma grid, with fixed noise, the
    first_cam condition, no text dropout and a fixed condition augmentation: comparable across checkpoints."""
    x0 = latents_of(batch, tokenizer)
    b, v, t = x0.shape[:3]
    indicator = jnp.broadcast_to(conditioning.condition_indicator("first_cam", v, t), (b, v, t))
    cond = condition_of(batch, batch["text"], indicator)
    model = nnx.merge(graphdef, params, buffers)
    key = jax.random.key(seed)
    total = 0.0
    for i, s in enumerate(VAL_SIGMAS):
        k_eps, k_aug = jax.random.split(jax.random.fold_in(key, i))
        sigma_B = jnp.full((b,), s, jnp.float32)
        x_t = x0 + s * jax.random.normal(k_eps, x0.shape)
        aug = conditioning.augment_condition(x0, jax.random.normal(k_aug, x0.shape),
                                             jnp.full((b,), float(np.exp(cfg.aug_p_mean)), jnp.float32), sigma_B,
                                             cfg.sigma_data)
        pred = dn.denoise_with_condition(model, x_t, sigma_B, cond, indicator, x0, aug, cfg.sigma_data)
        total = total + edm.kendall_loss(x0, pred.x0, sigma_B, pred.logvar_B, cfg.sigma_data, False)[0]
    return total / len(VAL_SIGMAS)
