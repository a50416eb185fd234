"""The Cosmos-Predict1 Single2MultiView DiT (`MultiviewExtensionGeneralDIT`) and its logvar head, in Flax NNX.

One network serves training and inference. Upstream packs views into time (`B C (V T) H W`); here the view axis is
explicit and flattened into tokens only in `tokens_from_grid` / `grid_from_tokens`.

Input assembly (upstream §4.2): channels [latent 0-15 | condition mask 16 | padding mask 17 | view embedding 18-23]
-> patchify `(c r m n)` with c slowest -> Linear(96, D). Output: Linear(D, m*n*r*C) unpatchified with C fastest.

Shape legend: B batch, V views, T latent frames per view, H/W latent height/width, C channels, L tokens of all views,
D width, E text width, S text tokens per view (512), K head dim.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from cosmos_jax import offload_overlap, sharding
from cosmos_jax.models import embeddings as emb
from cosmos_jax.models.blocks import FinalLayer, TransformerBlock
from cosmos_jax.models.layers import Buffer, Dense, RMSNorm, normal, param, xavier_uniform, zeros
from cosmos_jax.remat import remat_block


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """Network hyper-parameters under upstream's names (`net_kwargs`), plus how to execute it."""

    model_channels: int = 4096
    num_blocks: int = 28
    num_heads: int = 32
    mlp_ratio: float = 4.0
    crossattn_emb_channels: int = 1024
    adaln_lora_dim: int = 256
    patch_spatial: int = 2
    patch_temporal: int = 1
    in_channels: int = 16
    out_channels: int = 16
    max_img_h: int = 240
    max_img_w: int = 240
    max_frames: int = 128
    rope_h_extrapolation_ratio: float = 1.0
    rope_w_extrapolation_ratio: float = 1.0
    rope_t_extrapolation_ratio: float = 2.0
    extra_h_extrapolation_ratio: float = 1.0
    extra_w_extrapolation_ratio: float = 1.0
    extra_t_extrapolation_ratio: float = 1.0
    n_views_emb: int = 7
    view_condition_dim: int = 6
    add_repeat_frame_embedding: bool = True
    concat_padding_mask: bool = True
    logvar_channels: int = 128
    # Execution (not upstream): compute dtype, attention kernel, block loop and rematerialisation.
    dtype: str = "bfloat16"
    attention_impl: str = "auto"
    scan_blocks: bool = True
    remat: str = "none"
    # LoRA adapters on the block linears named (by upstream key) in lora_targets; rank 0 = full fine-tune.
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_targets: tuple[str, ...] = ()

    @property
    def head_dim(self) -> int:
        return self.model_channels // self.num_heads

    @property
    def patch_in_features(self) -> int:
        channels = self.in_channels + 1 + int(self.concat_padding_mask) + self.view_condition_dim
        return channels * self.patch_temporal * self.patch_spatial**2

    @property
    def patch_out_features(self) -> int:
        return self.out_channels * self.patch_temporal * self.patch_spatial**2

    @classmethod
    def from_config(cls, cfg) -> DiTConfig:
        """From an ml_collections `config.model` (extra keys are an error, missing ones take the defaults)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        items = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
        unknown = sorted(set(items) - fields)
        if unknown:
            raise ValueError(f"config.model has unknown keys {unknown}; known: {sorted(fields)}")
        return cls(**items)


class DiT(nnx.Module):
    """MultiviewExtensionGeneralDIT: returns the raw network output F (EDM preconditioning is outside)."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, dt = cfg.model_channels, jnp.dtype(cfg.dtype)
        self.x_embedder = Dense(cfg.patch_in_features, d, ("patch", "embed"), rngs=rngs, dtype=dt)
        seq_len = max(cfg.max_img_h // cfg.patch_spatial, cfg.max_img_w // cfg.patch_spatial,
                      cfg.max_frames // cfg.patch_temporal)
        self.pos_embedder_seq = Buffer(jnp.arange(seq_len, dtype=jnp.float32))
        self.t_linear_1 = Dense(d, d, ("embed", "mlp"), rngs=rngs, dtype=dt, init=normal(0.02))
        self.t_linear_2 = Dense(d, 3 * d, ("mlp", "adaln_out"), rngs=rngs, dtype=dt, init=normal(0.02))
        self.affline_norm = RMSNorm(d, "embed", rngs=rngs)
        self.view_embeddings = param(rngs, normal(1.0), (cfg.n_views_emb, cfg.view_condition_dim), ("table", None))
        if cfg.add_repeat_frame_embedding:
            self.repeat_frame_kernel = param(rngs, xavier_uniform, (1, cfg.view_condition_dim), (None, None))
            self.repeat_frame_bias = param(rngs, zeros, (cfg.view_condition_dim,), (None,))

        @nnx.split_rngs(splits=cfg.num_blocks)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(r: nnx.Rngs) -> TransformerBlock:
            return TransformerBlock(d, cfg.crossattn_emb_channels, cfg.num_heads, cfg.mlp_ratio, cfg.adaln_lora_dim,
                                    rngs=r, dtype=dt, impl=cfg.attention_impl,
                                    lora=(cfg.lora_rank, cfg.lora_alpha, tuple(cfg.lora_targets)))

        self.blocks = make_blocks(rngs)
        self.final_layer = FinalLayer(d, cfg.patch_out_features, cfg.adaln_lora_dim, rngs=rngs, dtype=dt)

    # -- input assembly ---------------------------------------------------------------------------------------
    def _view_embedding(self, view_idx_BVT, frame_repeat_BV):
        cfg = self.cfg
        table = self.view_embeddings[...]
        e_BVTc = table[jnp.clip(view_idx_BVT, 0, cfg.n_views_emb - 1)]
        if cfg.add_repeat_frame_embedding:
            rep_BVc = frame_repeat_BV[..., None].astype(jnp.float32) * self.repeat_frame_kernel[...][0] \
                + self.repeat_frame_bias[...]
            e_BVTc = e_BVTc + rep_BVc[:, :, None, :]
        return e_BVTc

    def _patchify(self, x_BVTHWC):
        b, v, t, h, w, c = x_BVTHWC.shape
        r, p = self.cfg.patch_temporal, self.cfg.patch_spatial
        x = x_BVTHWC.reshape(b, v, t // r, r, h // p, p, w // p, p, c)
        x = x.transpose(0, 1, 2, 4, 6, 8, 3, 5, 7)  # b v t h w (c r m n): channel slowest, as upstream
        return x.reshape(b, v, t // r, h // p, w // p, c * r * p * p)

    def _unpatchify(self, y_BVthwF):
        b, v, t, h, w, _ = y_BVthwF.shape
        r, p, c = self.cfg.patch_temporal, self.cfg.patch_spatial, self.cfg.out_channels
        y = y_BVthwF.reshape(b, v, t, h, w, p, p, r, c)  # (p1 p2 t C): channel fastest, as upstream
        y = y.transpose(0, 1, 2, 7, 3, 5, 4, 6, 8)
        return y.reshape(b, v, t * r, h * p, w * p, c)

    # -- forward ----------------------------------------------------------------------------------------------
    def __call__(self, x_BVTHWC: jax.Array, c_noise_B: jax.Array, text_BVSE: jax.Array, cond_mask_BVT: jax.Array,
                 view_idx_BVT: jax.Array, fps_B: jax.Array, frame_repeat_BV: jax.Array,
                 padding_mask_BHW: jax.Array | None = None) -> jax.Array:
        """x is c_in(sigma) * x_t; c_noise = 0.25 ln sigma; text is [B, V, S, E]; masks per latent frame.

        cond_mask_BVT: 1 where the latent frame is clean condition. view_idx_BVT: rows of `view_embeddings`.
        frame_repeat_BV: already divided by 10 (as upstream's conditioner). padding_mask_BHW: any resolution,
        nearest-resized to H x W (None = zeros, as in training).
        """
        cfg = self.cfg
        dt = jnp.dtype(cfg.dtype)
        b, v, t, h, w, _ = x_BVTHWC.shape
        if h % cfg.patch_spatial or w % cfg.patch_spatial or t % cfg.patch_temporal:
            raise ValueError(f"latent T x H x W = {t}x{h}x{w} must be divisible by the patch "
                             f"{cfg.patch_temporal}x{cfg.patch_spatial}x{cfg.patch_spatial} (video sizes by 16)")
        if text_BVSE.shape[:2] != (b, v):
            raise ValueError(f"text embeddings {text_BVSE.shape} must be [B={b}, V={v}, S, E]")
        f32 = jnp.float32
        cond_BVTHW1 = jnp.broadcast_to(cond_mask_BVT.astype(f32)[..., None, None, None], (b, v, t, h, w, 1))
        parts = [x_BVTHWC.astype(f32), cond_BVTHW1]
        if cfg.concat_padding_mask:
            pad_BHW = jnp.zeros((b, h, w), f32) if padding_mask_BHW is None else _nearest(padding_mask_BHW, h, w)
            parts.append(jnp.broadcast_to(pad_BHW[:, None, None, :, :, None], (b, v, t, h, w, 1)))
        view_BVTc = self._view_embedding(view_idx_BVT, frame_repeat_BV)
        parts.append(jnp.broadcast_to(view_BVTc[:, :, :, None, None, :], (b, v, t, h, w, view_BVTc.shape[-1])))
        x_BVthwD = self.x_embedder(self._patchify(jnp.concatenate(parts, axis=-1)))
        _, _, tp, hp, wp, d = x_BVthwD.shape
        x_BLD = _split_tokens(x_BVthwD.reshape(b, v * tp * hp * wp, d).astype(dt))

        # Noise-level embedding: the raw sinusoid (RMS-normed) is the AdaLN input; the MLP output is adaln_lora.
        sin_BD = emb.timestep_sinusoid(c_noise_B, d)
        adaln_lora_B3D = self.t_linear_2(jax.nn.silu(self.t_linear_1(sin_BD))).astype(dt)
        emb_BD = self.affline_norm(sin_BD).astype(dt)

        rope_ratios = (cfg.rope_t_extrapolation_ratio, cfg.rope_h_extrapolation_ratio, cfg.rope_w_extrapolation_ratio)
        ang_BLK = emb.rope3d_angles(v, tp, hp, wp, fps_B, cfg.head_dim, rope_ratios)
        rope = (_split_tokens(jnp.cos(ang_BLK)[:, :, None, :]), _split_tokens(jnp.sin(ang_BLK)[:, :, None, :]))
        extra_ratios = (cfg.extra_t_extrapolation_ratio, cfg.extra_h_extrapolation_ratio,
                        cfg.extra_w_extrapolation_ratio)
        extra_1LD = _split_tokens(emb.extra_sincos_embedding(v, tp, hp, wp, d, extra_ratios).astype(dt))
        text_BVSE = text_BVSE.astype(dt)

        x_BLD = self.run_blocks(x_BLD, emb_BD, adaln_lora_B3D, extra_1LD, rope, text_BVSE)
        final = self.final_layer
        if cfg.remat != "none":  # its fp32 LayerNorm residuals are 2 x L x D x 4 bytes (1.7 GB at the seed shape)
            final = jax.checkpoint(lambda x, e, a: self.final_layer(x, e, a), prevent_cse=False)
        y_BLF = final(x_BLD, emb_BD, adaln_lora_B3D)
        return self._unpatchify(y_BLF.reshape(b, v, tp, hp, wp, -1)).astype(jnp.float32)

    def run_blocks(self, x_BLD, emb_BD, adaln_lora_B3D, extra_1LD, rope, text_BVSE):
        """All blocks over the stacked parameters: `lax.scan` (scan_blocks) or a Python loop; same tree."""
        if (update := offload_overlap.active()) is not None:  # the train step with config.offload_overlap
            return self._run_blocks_streamed(update, x_BLD, (emb_BD, adaln_lora_B3D, extra_1LD, rope, text_BVSE))
        graphdef, state = nnx.split(self.blocks)

        def body(x, block_state):
            block = nnx.merge(graphdef, block_state)
            x = block(x, emb_BD, adaln_lora_B3D, extra_1LD, rope, text_BVSE,
                      remat_around_attention=self.cfg.remat == "attention_outside")
            return _split_tokens(x), None

        body = remat_block(body, self.cfg.remat)
        if self.cfg.scan_blocks:
            x_BLD, _ = jax.lax.scan(body, x_BLD, state)
        else:
            for i in range(self.cfg.num_blocks):
                x_BLD, _ = body(x_BLD, jax.tree.map(lambda a, i=i: a[i], state))
        return x_BLD

    def _run_blocks_streamed(self, update, x_BLD, ctx):
        """run_blocks with each block's pending optimizer update applied just before it runs (offload_overlap)."""
        graphdef, params, frozen = nnx.split(self.blocks, nnx.Param, ...)
        keep = self.cfg.remat == "attention_outside"  # the backward pass reuses the attention's residuals

        def apply_block(p, f, x, c):
            emb_BD, adaln_lora_B3D, extra_1LD, rope, text_BVSE = c
            block = nnx.merge(graphdef, p, f)
            return _split_tokens(block(x, emb_BD, adaln_lora_B3D, extra_1LD, rope, text_BVSE,
                                       remat_around_attention=keep))
        return offload_overlap.run(apply_block, nnx.to_pure_dict(params), nnx.to_pure_dict(frozen), x_BLD, ctx,
                                   update, keep_residuals=keep)


def _split_tokens(x_BL___: jax.Array) -> jax.Array:
    """Pin a per-token array [B or 1, L, ...]: batch over (data, fsdp), tokens over context (no-op without a mesh).
    Token-wise work (RoPE, the sin/cos embedding, norms, projections, MLP) then runs on each device's L / cp slice."""
    return sharding.constrain(x_BL___, "act_batch", "act_length", *(None,) * (x_BL___.ndim - 2))


def _nearest(mask_BHW: jax.Array, h: int, w: int) -> jax.Array:
    """torch `interpolate(mode="nearest")`: source index floor(i * in / out)."""
    hi = (jnp.arange(h) * mask_BHW.shape[1]) // h
    wi = (jnp.arange(w) * mask_BHW.shape[2]) // w
    return mask_BHW.astype(jnp.float32)[:, hi][:, :, wi]


class LogvarHead(nnx.Module):
    """Upstream `logvar = Sequential(FourierFeatures(128, normalize=True), Linear(128, 1, bias=False))`."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        key_f, key_p = jax.random.split(rngs.params())
        self.freqs = Buffer(2 * jnp.pi * jax.random.normal(key_f, (channels,), jnp.float32))
        self.phases = Buffer(2 * jnp.pi * jax.random.uniform(key_p, (channels,), jnp.float32))
        self.linear = Dense(channels, 1, (None, None), rngs=rngs, dtype=jnp.float32)

    def __call__(self, c_noise_B: jax.Array) -> jax.Array:
        """logvar(sigma) [B] from c_noise = 0.25 ln sigma."""
        return self.linear(emb.fourier_features(c_noise_B, self.freqs[...], self.phases[...]))[:, 0]


class DiffusionNet(nnx.Module):
    """What upstream checkpoints hold: `net` (the DiT) and `logvar` (the uncertainty head)."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        self.net = DiT(cfg, rngs=rngs)
        self.logvar = LogvarHead(cfg.logvar_channels, rngs=rngs)
