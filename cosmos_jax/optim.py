"""Upstream's optimizer: fused AdamW (lr 2^-14.3, wd 0.1 on every trainable tensor, betas 0.9/0.99, eps 1e-10),
the LambdaLinear warm-up schedule, global-norm clipping at 1.0 and force_finite (docs/upstream.md §1.3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def lambda_linear(step, warmup: int, f_start: float, f_max: float, f_min: float, cycle_length: float):
    """Upstream `LambdaLinearScheduler` (one cycle): the factor applied to the base lr at update `step` (0-based).

    Linear from f_start to f_max over `warmup` updates, then from f_max towards f_min over the cycle. With the
    seed's values (warm-up 2500 > max_iter 2000) the warm-up never finishes: the factor reaches 0.8 at step 2000.
    """
    step = jnp.asarray(step, jnp.float32)
    warm = (f_max - f_start) / warmup * step + f_start
    after = f_min + (f_max - f_min) * (cycle_length - step) / cycle_length
    return jnp.where(step < warmup, warm, after)


def schedule(config) -> optax.Schedule:
    o = config.optim
    return lambda count: o.lr * lambda_linear(count, o.warmup_steps, o.f_start, o.f_max, o.f_min,
                                              float(o.cycle_length))


def parts(config) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """(clip_by_global_norm, AdamW(schedule)): the two halves of `make`; the offloaded update (cosmos_jax/
    offload.py) applies the second one block at a time after the first on the whole gradient."""
    o = config.optim
    return (optax.clip_by_global_norm(o.clip_norm),
            optax.adamw(schedule(config), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))


def make(config) -> optax.GradientTransformation:
    """clip_by_global_norm -> AdamW(schedule). Weight decay applies to every tensor given to it (all trainable
    parameters, as upstream's single parameter group); buffers are never given to the optimizer."""
    return optax.chain(*parts(config))


def force_finite(grads):
    """NaN/Inf gradient elements set to 0 (upstream GradClip force_finite); returns (grads, count of them)."""
    leaves = jax.tree.leaves(grads)
    count = sum(jnp.sum(~jnp.isfinite(g)) for g in leaves) if leaves else jnp.zeros((), jnp.int32)
    return jax.tree.map(lambda g: jnp.where(jnp.isfinite(g), g, 0), grads), count.astype(jnp.int32)
