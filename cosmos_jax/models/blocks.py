"""One Cosmos DiT transformer block: full self-attention (FA), per-view cross-attention (CA), MLP.

Upstream: cosmos_predict1/diffusion/training/module/blocks.py (`GeneralDITTransformerBlock`, `DITBuildingBlock`,
`VideoAttn`), module/attention.py (`Attention`, qkv_norm "RRI"). Each sub-block is
    shift, scale, gate = adaLN_modulation(emb) + adaln_lora
    x = x + gate * op(LayerNorm(x) * (1 + scale) + shift)
and the block begins with the extra per-block sin/cos embedding added to x.

Shape legend: B batch, V views, L tokens (all views), Lv tokens per view, S text tokens per view, N heads,
K head dim, D width, E text-embedding width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cosmos_jax import offload_overlap
from cosmos_jax.models.context_parallel import per_view_cross_attention, self_attention
from cosmos_jax.models.embeddings import apply_rope
from cosmos_jax.models.layers import AdaLNModulation, Dense, RMSNorm, layer_norm, modulate, zeros


def lora_for(lora, key: str) -> tuple[int, float] | None:
    """(rank, alpha) if `key` (an upstream name inside a block, e.g. "blocks.0.block.attn.to_q") matches one of the
    targets as a dotted suffix ("to_q", "attn.to_q", "blocks.1.block.attn.to_k", "layer1"), else None."""
    if not lora or not lora[0]:
        return None
    rank, alpha, targets = lora
    return (rank, alpha) if any(key == t or key.endswith("." + t) for t in targets) else None


class Attention(nnx.Module):
    """q/k/v/out projections without bias, per-head RMSNorm on q and k, optional RoPE (self-attention only)."""

    def __init__(self, dim: int, context_dim: int, num_heads: int, *, rngs: nnx.Rngs, dtype, impl: str,
                 lora=None, key: str = ""):
        self.num_heads, self.head_dim, self.impl = num_heads, dim // num_heads, impl
        kv_axis = "embed" if context_dim == dim else "kv_embed"
        ad = lambda name: lora_for(lora, f"{key}.{name}")  # noqa: E731
        self.to_q = Dense(dim, dim, ("embed", "heads"), rngs=rngs, dtype=dtype, lora=ad("to_q"))
        self.q_norm = RMSNorm(self.head_dim, "norm", rngs=rngs)
        self.to_k = Dense(context_dim, dim, (kv_axis, "heads"), rngs=rngs, dtype=dtype, lora=ad("to_k"))
        self.k_norm = RMSNorm(self.head_dim, "norm", rngs=rngs)
        self.to_v = Dense(context_dim, dim, (kv_axis, "heads"), rngs=rngs, dtype=dtype, lora=ad("to_v"))
        self.to_out = Dense(dim, dim, ("heads", "embed"), rngs=rngs, dtype=dtype, lora=ad("to_out"))

    def qkv(self, x_BLD: jax.Array, context: jax.Array | None = None, rope=None):
        """Projections, per-head q/k RMSNorm, then RoPE on q and k (self-attention only). k and v come from x, or
        from `context` (text, any leading shape: [B, V, S, E] gives [B, V, S, N, K])."""
        ctx = x_BLD if context is None else context
        heads = lambda t: t.reshape(*t.shape[:-1], self.num_heads, self.head_dim)  # noqa: E731
        q_BLNK = self.q_norm(heads(self.to_q(x_BLD)))
        k_BSNK = self.k_norm(heads(self.to_k(ctx)))
        v_BSNK = heads(self.to_v(ctx))
        if rope is not None:
            cos_BL1K, sin_BL1K = rope
            q_BLNK = apply_rope(q_BLNK, cos_BL1K, sin_BL1K)
            k_BSNK = apply_rope(k_BSNK, cos_BL1K, sin_BL1K)
        return q_BLNK, k_BSNK, v_BSNK

    def out(self, o_BLNK: jax.Array) -> jax.Array:
        return self.to_out(o_BLNK.reshape(*o_BLNK.shape[:-2], -1))

    def __call__(self, x_BLD: jax.Array, text_BVSE: jax.Array | None = None, rope=None) -> jax.Array:
        """Self-attention over all tokens (text None), or each view's tokens to its own text [B, V, S, E]."""
        q, k, v = self.qkv(x_BLD, text_BVSE, rope)
        if text_BVSE is None:
            return self.out(self_attention(q, k, v, self.impl))
        return self.out(per_view_cross_attention(q, k, v, self.impl))


class MLP(nnx.Module):
    """GPT2FeedForward: Linear(D, 4D) -> exact GELU -> Linear(4D, D), no bias."""

    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, dtype, lora=None):
        self.layer1 = Dense(dim, hidden, ("embed", "mlp"), rngs=rngs, dtype=dtype,
                            lora=lora_for(lora, "blocks.2.block.layer1"))
        self.layer2 = Dense(hidden, dim, ("mlp", "embed"), rngs=rngs, dtype=dtype,
                            lora=lora_for(lora, "blocks.2.block.layer2"))

    def __call__(self, x_BLD: jax.Array) -> jax.Array:
        return self.layer2(jax.nn.gelu(self.layer1(x_BLD), approximate=False))


def _gated(adaln: AdaLNModulation, x_BLD, emb_BD, adaln_lora_B3D, op):
    shift_BD, scale_BD, gate_BD = jnp.split(adaln(emb_BD) + adaln_lora_B3D, 3, axis=-1)
    y_BLD = op(modulate(layer_norm(x_BLD), shift_BD, scale_BD))
    return x_BLD + gate_BD[:, None, :].astype(x_BLD.dtype) * y_BLD.astype(x_BLD.dtype)


class SelfAttnBlock(nnx.Module):
    """FA: joint self-attention over the tokens of all views (the only cross-view mixing). Written as the part
    before the attention kernel (`pre`) and the part after it (`post`); TransformerBlock calls the kernel between
    them (and can rematerialise around it)."""

    def __init__(self, dim, num_heads, lora_dim, *, rngs, dtype, impl, lora=None):
        self.adaln = AdaLNModulation(dim, lora_dim, 3, rngs=rngs, dtype=dtype, zero_init=True)
        self.attn = Attention(dim, dim, num_heads, rngs=rngs, dtype=dtype, impl=impl, lora=lora,
                              key="blocks.0.block.attn")

    def pre(self, x_BLD, emb_BD, adaln_lora_B3D, rope):
        """(q, k, v, gate) of the gated sub-block x + gate * attn(LayerNorm(x) * (1 + scale) + shift)."""
        shift_BD, scale_BD, gate_BD = jnp.split(self.adaln(emb_BD) + adaln_lora_B3D, 3, axis=-1)
        q_BLNK, k_BLNK, v_BLNK = self.attn.qkv(modulate(layer_norm(x_BLD), shift_BD, scale_BD), rope=rope)
        return q_BLNK, k_BLNK, v_BLNK, gate_BD

    def post(self, x_BLD, o_BLNK, gate_BD):
        return x_BLD + gate_BD[:, None, :].astype(x_BLD.dtype) * self.attn.out(o_BLNK).astype(x_BLD.dtype)


class CrossAttnBlock(nnx.Module):
    """CA: view v's tokens attend only to its own S text tokens (upstream reshapes views into the batch)."""

    def __init__(self, dim, context_dim, num_heads, lora_dim, *, rngs, dtype, impl, lora=None):
        self.adaln = AdaLNModulation(dim, lora_dim, 3, rngs=rngs, dtype=dtype, zero_init=True)
        self.attn = Attention(dim, context_dim, num_heads, rngs=rngs, dtype=dtype, impl=impl, lora=lora,
                              key="blocks.1.block.attn")

    def __call__(self, x_BLD, emb_BD, adaln_lora_B3D, text_BVSE):
        return _gated(self.adaln, x_BLD, emb_BD, adaln_lora_B3D, lambda h: self.attn(h, text_BVSE))


class MLPBlock(nnx.Module):
    def __init__(self, dim, hidden, lora_dim, *, rngs, dtype, lora=None):
        self.adaln = AdaLNModulation(dim, lora_dim, 3, rngs=rngs, dtype=dtype, zero_init=True)
        self.mlp = MLP(dim, hidden, rngs=rngs, dtype=dtype, lora=lora)

    def __call__(self, x_BLD, emb_BD, adaln_lora_B3D):
        return _gated(self.adaln, x_BLD, emb_BD, adaln_lora_B3D, self.mlp)


class TransformerBlock(nnx.Module):
    """FA -> CA -> MLP, preceded by the extra per-block sin/cos embedding ("FA-CA-MLP", upstream blocks.0-2)."""

    def __init__(self, dim, context_dim, num_heads, mlp_ratio, lora_dim, *, rngs, dtype, impl, lora=None):
        self.fa = SelfAttnBlock(dim, num_heads, lora_dim, rngs=rngs, dtype=dtype, impl=impl, lora=lora)
        self.ca = CrossAttnBlock(dim, context_dim, num_heads, lora_dim, rngs=rngs, dtype=dtype, impl=impl, lora=lora)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), lora_dim, rngs=rngs, dtype=dtype, lora=lora)

    def __call__(self, x_BLD, emb_BD, adaln_lora_B3D, extra_pos_1LD, rope, text_BVSE,
                 remat_around_attention: bool = False):
        """`remat_around_attention` (remat policy `attention_outside`): the same function, rematerialised around the
        self-attention kernel: everything before it (norm, modulation, q/k/v, RoPE) and everything after it (output
        projection, CA, MLP) is recomputed in the backward pass, while the attention call itself stays outside
        `jax.checkpoint`, so its forward (the flash kernel and its own residuals) is not run twice. Saves ~q, k, v,
        o per block (docs/performance.md: 463 vs 552 ms/block)."""

        def before_attention(x):
            if extra_pos_1LD is not None:
                x = x + extra_pos_1LD.astype(x.dtype)
            return (x, *self.fa.pre(x, emb_BD, adaln_lora_B3D, rope))

        def after_attention(x, o_BLNK, gate_BD):
            x = self.fa.post(x, o_BLNK, gate_BD)
            x = self.ca(x, emb_BD, adaln_lora_B3D, text_BVSE)
            return self.mlp(x, emb_BD, adaln_lora_B3D)

        if remat_around_attention:
            before_attention = jax.checkpoint(before_attention, prevent_cse=False)
            after_attention = jax.checkpoint(after_attention, prevent_cse=False)
        x_BLD, q_BLNK, k_BLNK, v_BLNK, gate_BD = before_attention(x_BLD)
        o_BLNK = self_attention(q_BLNK, k_BLNK, v_BLNK, self.fa.attn.impl)
        o_BLNK = offload_overlap.midpoint(o_BLNK)  # the identity, but where the streamed update orders a fetch here
        return after_attention(x_BLD, o_BLNK, gate_BD)


class FinalLayer(nnx.Module):
    """LayerNorm -> AdaLN-LoRA (shift, scale; adds adaln_lora[:, :2D]) -> Linear(D, p*p*t*C_out)."""

    def __init__(self, dim, out_features, lora_dim, *, rngs, dtype):
        self.adaln = AdaLNModulation(dim, lora_dim, 2, rngs=rngs, dtype=dtype, zero_init=True)
        self.linear = Dense(dim, out_features, ("embed", "patch"), rngs=rngs, dtype=dtype, init=zeros)

    def __call__(self, x_BLD, emb_BD, adaln_lora_B3D):
        d = x_BLD.shape[-1]
        shift_BD, scale_BD = jnp.split(self.adaln(emb_BD) + adaln_lora_B3D[:, : 2 * d], 2, axis=-1)
        return self.linear(modulate(layer_norm(x_BLD), shift_BD, scale_BD))
