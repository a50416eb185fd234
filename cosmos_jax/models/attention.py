"""The attention kernel: `jax.nn.dot_product_attention` (cuDNN flash attention on GPU, XLA elsewhere).

Upstream runs Transformer Engine `DotProductAttention` with `no_mask` and softmax scale 1/sqrt(K). Cross-attention
to text also runs WITHOUT a mask: zero-padded T5 tokens get k = v = 0 (after the q/k RMSNorm k is exactly 0 too)
and still take softmax mass. Masking them would break parity with the released weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "cudnn", "xla")


def resolve_implementation(impl: str, dtype) -> str | None:
    """'auto' -> cuDNN on GPU for 16-bit inputs, otherwise XLA. cuDNN refuses fp32."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"model.attention_impl={impl!r}: expected one of {IMPLEMENTATIONS}")
    if impl == "auto":
        on_gpu = jax.default_backend() == "gpu"
        return "cudnn" if on_gpu and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "xla"
    return impl


def attention(q_BLNK: jax.Array, k_BSNK: jax.Array, v_BSNK: jax.Array, impl: str = "auto") -> jax.Array:
    """Unmasked softmax attention with scale 1/sqrt(K); returns [B, L, N, K]."""
    return jax.nn.dot_product_attention(q_BLNK, k_BSNK, v_BSNK,
                                        implementation=resolve_implementation(impl, q_BLNK.dtype))
