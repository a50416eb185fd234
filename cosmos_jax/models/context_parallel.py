"""Attention with the token sequence split over the mesh's `context` axis (Ulysses), and per-view
cross-attention under that split.

Between attentions every op of a block is token-wise, so with `context` > 1 each device keeps L / cp tokens of every
sample (the split is pinned in dit.py; RoPE and the per-block sin/cos embedding are built for the same split).

Self-attention (DeepSpeed-Ulysses): inside `shard_map`, an all-to-all trades the sequence split for a head split
([b, L/cp, N, K] -> [b, L, N/cp, K]), the local cuDNN kernel runs on full-length sequences of N/cp heads, and a second
all-to-all trades back. The cuDNN op refuses a sequence-sharded input, so this is also what makes it run at all.
docs/performance.md measured 561-567 TFLOP/s per GPU at cp = 2, 4 (589 on one GPU).

Cross-attention: token i of view v attends to view v's S text tokens. Without a split this is a reshape of the views
into the batch (upstream). Under the split a device holds a contiguous range of tokens that may straddle a view
boundary; it attends its tokens to the text of each view its range touches (1 when the views are whole multiples of
the shard; otherwise up to ceil(Ll/Lv) + 1, e.g. 2 for 3 views over 4 devices) and keeps, per token, the result
of its own view.

Shape legend: B batch, L tokens of all views (Ll local), V views, Lv tokens per view, S text tokens, N heads,
K head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from cosmos_jax import sharding
from cosmos_jax.models.attention import attention


def _specs(q_shape):
    """shard_map specs: batch over (data, fsdp) where it divides, sequence over context."""
    spec = sharding.activation_spec(q_shape, ("act_batch", "act_length", None, None))
    return P(spec[0], sharding.CONTEXT_AXIS, None, None), spec[0]


def _check(cp: int, num_heads: int, length: int) -> None:
    if num_heads % cp:
        raise ValueError(f"mesh context={cp} must divide the {num_heads} attention heads (Ulysses splits heads)")
    if length % cp:
        raise ValueError(f"mesh context={cp} must divide the {length} tokens of a sample")


def self_attention(q_BLNK: jax.Array, k_BLNK: jax.Array, v_BLNK: jax.Array, impl: str) -> jax.Array:
    """Full (joint, all-views) self-attention; Ulysses all-to-all when the mesh has context > 1."""
    cp = sharding.axis_size(sharding.CONTEXT_AXIS)
    if cp == 1:
        return attention(q_BLNK, k_BLNK, v_BLNK, impl)
    _check(cp, q_BLNK.shape[2], q_BLNK.shape[1])
    spec, _ = _specs(q_BLNK.shape)
    axis = sharding.CONTEXT_AXIS

    def local(q_bLlNK, k_bLlNK, v_bLlNK):
        to_heads = lambda t: jax.lax.all_to_all(t, axis, split_axis=2, concat_axis=1, tiled=True)  # noqa: E731
        o_bLnK = attention(to_heads(q_bLlNK), to_heads(k_bLlNK), to_heads(v_bLlNK), impl)
        return jax.lax.all_to_all(o_bLnK, axis, split_axis=1, concat_axis=2, tiled=True)

    return jax.shard_map(local, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q_BLNK, k_BLNK, v_BLNK)


def per_view_cross_attention(q_BLNK: jax.Array, k_BVSNK: jax.Array, v_BVSNK: jax.Array, impl: str) -> jax.Array:
    """Each view's tokens attend to that view's text only. Returns [B, L, N, K]."""
    b, length, n, kd = q_BLNK.shape
    views, s = k_BVSNK.shape[1], k_BVSNK.shape[2]
    lv = length // views
    cp = sharding.axis_size(sharding.CONTEXT_AXIS)
    if cp == 1:  # upstream: views into the batch
        o = attention(q_BLNK.reshape(b * views, lv, n, kd), k_BVSNK.reshape(b * views, s, n, kd),
                      v_BVSNK.reshape(b * views, s, n, kd), impl)
        return o.reshape(b, length, n, kd)
    _check(cp, n, length)
    q_spec, batch_axes = _specs(q_BLNK.shape)
    kv_spec = P(batch_axes, None, None, None, None)
    ll = length // cp

    def local(q_bLlNK, k_bVSNK, v_bVSNK):
        start = jax.lax.axis_index(sharding.CONTEXT_AXIS) * ll
        if lv % ll == 0 or ll % lv == 0:  # whole views per shard, or a shard inside one view
            nv = max(ll // lv, 1)
            first = start // lv
            k_bvSNK = jax.lax.dynamic_slice_in_dim(k_bVSNK, first, nv, axis=1)
            v_bvSNK = jax.lax.dynamic_slice_in_dim(v_bVSNK, first, nv, axis=1)
            bl = q_bLlNK.shape[0]
            o = attention(q_bLlNK.reshape(bl * nv, ll // nv, n, kd), k_bvSNK.reshape(bl * nv, s, n, kd),
                          v_bvSNK.reshape(bl * nv, s, n, kd), impl)
            return o.reshape(q_bLlNK.shape)
        # the shard straddles view boundaries: attend to each touched view, keep each token's own
        view_Ll = (start + jnp.arange(ll)) // lv
        o = jnp.zeros_like(q_bLlNK)
        for j in range(min(views, -(-ll // lv) + 1)):
            vj = jnp.minimum(start // lv + j, views - 1)
            k = jax.lax.dynamic_index_in_dim(k_bVSNK, vj, axis=1, keepdims=False)
            v = jax.lax.dynamic_index_in_dim(v_bVSNK, vj, axis=1, keepdims=False)
            o = jnp.where((view_Ll == vj)[None, :, None, None], attention(q_bLlNK, k, v, impl), o)
        return o

    return jax.shard_map(local, in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec,
                         check_vma=False)(q_BLNK, k_BVSNK, v_BVSNK)
