"""Small building blocks shared by the DiT: a logically-named dense layer, norms, modulation, buffers.

Logical axis names carried by parameters (mapped to the mesh only in `cosmos_jax/sharding.py`):
  "layers"   stacked transformer blocks          "embed"  model width D
  "mlp"      MLP hidden width (4D)               "heads"  attention inner width (N*K)
  "kv_embed" text-embedding width (cross-attn)   "adaln"  AdaLN-LoRA rank
  "adaln_out" modulation outputs (2D or 3D)      "norm"   per-head norm width K
  "patch"    patch features                      "table"  small embedding tables
  None       replicated
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from cosmos_jax import lora as lora_lib
from cosmos_jax import sharding

Initializer = Callable[..., jax.Array]


class Buffer(nnx.Variable):
    """A persistent, non-trainable tensor (upstream `register_buffer(..., persistent=True)`).

    Buffers are exported to `.pt` files but neither optimised, decayed nor averaged by the EMA.
    """


def param(rngs: nnx.Rngs, init: Initializer, shape: Sequence[int], axes: Sequence[str | None]) -> nnx.Param:
    """An fp32 parameter carrying logical axis names."""
    assert len(shape) == len(axes), (shape, axes)
    return nnx.Param(nnx.with_partitioning(init, tuple(axes))(rngs.params(), tuple(shape), jnp.float32))


xavier_uniform = nnx.initializers.xavier_uniform()
zeros = nnx.initializers.zeros_init()
ones = nnx.initializers.ones_init()


def normal(std: float) -> Initializer:
    return nnx.initializers.normal(stddev=std)


class Dense(nnx.Module):
    """Bias-free linear layer `y = x @ kernel` with an fp32 kernel [in, out] used in `dtype`.

    The kernel is torch's `Linear.weight` transposed (see cosmos_jax/weights/keymap.py). With `lora=(rank, alpha)`
    it also carries a low-rank adapter (`nnx.LoRAParam`): y += (alpha / rank) (x @ lora_a) @ lora_b, lora_b
    zero-initialised so the adapted layer starts as the base layer.
    """

    def __init__(self, in_features: int, out_features: int, axes: tuple[str | None, str | None], *,
                 rngs: nnx.Rngs, dtype=jnp.float32, init: Initializer = xavier_uniform,
                 lora: tuple[int, float] | None = None):
        self.kernel = param(rngs, init, (in_features, out_features), axes)
        self.dtype = dtype
        self.lora_scale = 0.0
        if lora and lora[0] > 0:
            rank, alpha = lora
            self.lora_scale = lora_lib.scale(rank, alpha)
            a_init = nnx.with_partitioning(normal(1.0 / rank), (axes[0], None))
            b_init = nnx.with_partitioning(zeros, (None, axes[1]))
            self.lora_a = nnx.LoRAParam(a_init(rngs.params(), (in_features, rank), jnp.float32))
            self.lora_b = nnx.LoRAParam(b_init(rngs.params(), (rank, out_features), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        y = jnp.einsum("...i,io->...o", x, sharding.gather(self.kernel[...].astype(self.dtype)))
        if self.lora_scale:
            a, b = self.lora_a[...].astype(self.dtype), self.lora_b[...].astype(self.dtype)
            y = y + self.lora_scale * jnp.einsum("...r,ro->...o", jnp.einsum("...i,ir->...r", x, a), b)
        return y


class RMSNorm(nnx.Module):
    """Transformer Engine RMSNorm: x / sqrt(mean(x^2) + eps) * weight, computed in fp32."""

    def __init__(self, dim: int, axis_name: str | None, *, rngs: nnx.Rngs, eps: float = 1e-6):
        self.scale = param(rngs, ones, (dim,), (axis_name,))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """LayerNorm without affine parameters (upstream `nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)`)."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def modulate(x_BLD: jax.Array, shift_BD: jax.Array, scale_BD: jax.Array) -> jax.Array:
    """AdaLN modulation x * (1 + scale) + shift, broadcast over tokens."""
    return x_BLD * (1 + scale_BD[:, None, :]) + shift_BD[:, None, :]


class AdaLNModulation(nnx.Module):
    """AdaLN-LoRA: SiLU -> Linear(D, r) -> Linear(r, k*D); upstream `adaLN_modulation.{1,2}`."""

    def __init__(self, dim: int, lora_dim: int, n_chunks: int, *, rngs: nnx.Rngs, dtype, zero_init: bool):
        self.down = Dense(dim, lora_dim, ("embed", "adaln"), rngs=rngs, dtype=dtype)
        self.up = Dense(lora_dim, n_chunks * dim, ("adaln", "adaln_out"), rngs=rngs, dtype=dtype,
                        init=zeros if zero_init else xavier_uniform)

    def __call__(self, emb_BD: jax.Array) -> jax.Array:
        return self.up(self.down(jax.nn.silu(emb_BD)))
