"""Cosmos-Tokenize1-CV8x8x8-720p (upstream `CausalContinuousVideoTokenizer`, FACTORIZED, "AE"), Flax NNX.

Spec: docs/tokenizer-t5.md §1-§3. Channels-last throughout.
  encoder  [N, 1+8k, H, W, 3] in [-1, 1] -> Haar patch (x4: 192 ch, 2k+1 frames) -> conv_in pair -> levels (res
           blocks; `down[0]` halves T, H, W) -> mid (block_1, spatial attn, causal temporal attn, block_2) ->
           norm_out, swish, conv_out pair -> quant_conv -> latent [N, 1+k, H/8, W/8, 16]. The identity
           distribution returns this quant_conv output itself: it is what `encoder.jit(x)[0]` is.
  decoder  post_quant_conv -> conv_in pair -> mid -> levels 2, 1, 0 (`up[1]`: T -> 2T-1, x2 in H, W) ->
           norm_out, swish, conv_out pair (192 ch) -> Haar unpatch, drop 3 frames -> [N, 8(t-1)+1, 8h, 8w, 3],
           not clamped.
Parameter paths are the torch keys without the `encoder.` / `decoder.` prefix (`quant_conv` / `post_quant_conv` sit
inside our encoder / decoder) with `conv3d.weight` -> `kernel`, `conv3d.bias` -> `bias`, `norm.weight` -> `scale`,
`norm.bias` -> `bias` (cosmos_jax/weights/tokenizer.py's `torch_key_table`, which also reads the converted weights
that `python -m converters.tokenizer_to_orbax` writes).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from cosmos_jax.models.cosmos_tokenizer_layers import (
    CausalConv3d,
    CausalNormalize,
    HybridDownsample,
    HybridUpsample,
    ResnetBlock,
    SpatialAttention,
    TemporalAttention,
    factorized_pair,
    haar_patch,
    haar_unpatch,
    run,
    swish,
)


@dataclasses.dataclass(frozen=True)
class Cosmos8x8x8Config:
    """Upstream `TokenizerConfigs.CV8x8x8_720p` (spec §1.1) under upstream's names; defaults are the release."""

    in_channels: int = 3
    out_channels: int = 3
    channels: int = 128
    channels_mult: tuple[int, ...] = (2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (32,)
    resolution: int = 1024
    patch_size: int = 4
    z_channels: int = 16
    latent_channels: int = 16
    temporal_compression: int = 8
    spatial_compression: int = 8
    legacy_mode: bool = False
    # Execution (not upstream): compute dtype and the query block of the mid-block attention.
    dtype: str = "bfloat16"
    attn_query_chunk: int = 1024

    @classmethod
    def release(cls, **overrides) -> Cosmos8x8x8Config:
        """Cosmos-Tokenize1-CV8x8x8-720p: 105,653,696 parameters (encoder side 42,914,864, decoder 62,738,832)."""
        return cls(**overrides)

    def __post_init__(self):
        object.__setattr__(self, "channels_mult", tuple(self.channels_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        p = self.patch_size
        if p < 1 or p & (p - 1):
            raise ValueError(f"Cosmos8x8x8Config.patch_size={p}: expected a power of 2")
        n = len(self.channels_mult)
        for name, value in (("temporal", self.num_temporal_downs), ("spatial", self.num_spatial_downs)):
            if not 0 <= value <= n:
                raise ValueError(f"Cosmos8x8x8Config.{name}_compression with patch_size {p}: {value} downsamplings, "
                                 f"expected 0..{n} (len(channels_mult))")
        res = [self.resolution // p // 2**i for i in range(n)]
        if any(r in self.attn_resolutions for r in res):
            raise NotImplementedError(f"Cosmos8x8x8Config.attn_resolutions={self.attn_resolutions} puts attention "
                                      f"inside a level (level resolutions {res}); only the mid-block attention of "
                                      "the released CV8x8x8 is implemented")

    @property
    def num_temporal_downs(self) -> int:
        return int(math.log2(self.temporal_compression)) - int(math.log2(self.patch_size))

    @property
    def num_spatial_downs(self) -> int:
        return int(math.log2(self.spatial_compression)) - int(math.log2(self.patch_size))

    def architecture(self) -> dict:
        """The fields that define the weights (what meta.json stores)."""
        d = dataclasses.asdict(self)
        for k in ("dtype", "attn_query_chunk"):
            d.pop(k)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


class _Level(nnx.Module):
    def __init__(self, blocks: list[ResnetBlock], resample_name: str, resample: nnx.Module | None):
        self.block = nnx.List(blocks)
        setattr(self, resample_name, resample)


class _Mid(nnx.Module):
    """block_1 -> attn_1 = [spatial, causal temporal] -> block_2."""

    def __init__(self, c: int, *, rngs: nnx.Rngs, dtype, query_chunk: int):
        self.block_1 = ResnetBlock(c, c, rngs=rngs, dtype=dtype)
        self.attn_1 = nnx.List([SpatialAttention(c, rngs=rngs, dtype=dtype, query_chunk=query_chunk),
                                TemporalAttention(c, rngs=rngs, dtype=dtype, query_chunk=query_chunk)])
        self.block_2 = ResnetBlock(c, c, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.block_2(run(self.attn_1, self.block_1(x)))


def _check_video(cfg: Cosmos8x8x8Config, t: int, h: int, w: int, what: str) -> None:
    if (t - 1) % cfg.temporal_compression or h % cfg.spatial_compression or w % cfg.spatial_compression:
        raise ValueError(f"cosmos tokenizer {what}: {t} frames of {h}x{w}; expected 1 + {cfg.temporal_compression}k "
                         f"frames and H, W multiples of {cfg.spatial_compression}")


class CosmosEncoder(nnx.Module):
    """`encoder_jit()` = encoder + quant_conv (+ identity distribution): [N, T, H, W, 3] -> [N, t, h, w, latent]."""

    def __init__(self, cfg: Cosmos8x8x8Config, *, rngs: nnx.Rngs):
        self.config = cfg
        dt = jnp.dtype(cfg.dtype)
        kw = dict(rngs=rngs, dtype=dt)
        ch, mult, n = cfg.channels, cfg.channels_mult, len(cfg.channels_mult)
        self.conv_in = factorized_pair(cfg.in_channels * cfg.patch_size**3, ch, **kw)
        levels, block_in = [], ch
        for i, m in enumerate(mult):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, ch * m, **kw))
                block_in = ch * m
            spatial, temporal = i < cfg.num_spatial_downs, i < cfg.num_temporal_downs
            down = HybridDownsample(block_in, spatial, temporal, **kw) if i != n - 1 and (spatial or temporal) else None
            levels.append(_Level(blocks, "downsample", down))
        self.down = nnx.List(levels)
        self.mid = _Mid(block_in, query_chunk=cfg.attn_query_chunk, **kw)
        self.norm_out = CausalNormalize(block_in)
        self.conv_out = factorized_pair(block_in, cfg.z_channels, **kw)
        self.quant_conv = CausalConv3d(cfg.z_channels, cfg.latent_channels, (1, 1, 1), **kw)

    def __call__(self, x_NTHWC: jax.Array) -> jax.Array:
        _check_video(self.config, *x_NTHWC.shape[1:4], "encode")
        x = haar_patch(x_NTHWC.astype(jnp.float32), self.config.patch_size)  # exact 1/8 in fp32, then dtype
        h = run(self.conv_in, x.astype(jnp.dtype(self.config.dtype)))
        for level in self.down:
            for block in level.block:
                h = block(h)
            if level.downsample is not None:
                h = level.downsample(h)
        h = self.mid(h)
        h = run(self.conv_out, swish(self.norm_out(h)))
        return self.quant_conv(h)


class CosmosDecoder(nnx.Module):
    """`decoder_jit()` = post_quant_conv + decoder: [N, t, h, w, latent] -> [N, 8(t-1)+1, 8h, 8w, 3] (unclamped)."""

    def __init__(self, cfg: Cosmos8x8x8Config, *, rngs: nnx.Rngs):
        self.config = cfg
        dt = jnp.dtype(cfg.dtype)
        kw = dict(rngs=rngs, dtype=dt)
        ch, mult, n = cfg.channels, cfg.channels_mult, len(cfg.channels_mult)
        nsu, ntu = cfg.num_spatial_downs, cfg.num_temporal_downs
        self.post_quant_conv = CausalConv3d(cfg.latent_channels, cfg.z_channels, (1, 1, 1), **kw)
        block_in = ch * mult[-1]
        self.conv_in = factorized_pair(cfg.z_channels, block_in, **kw)
        self.mid = _Mid(block_in, query_chunk=cfg.attn_query_chunk, **kw)
        levels: list[_Level | None] = [None] * n
        for i in reversed(range(n)):  # `up` is indexed by level: up[n-1] runs first
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, ch * mult[i], **kw))
                block_in = ch * mult[i]
            up = None
            if i != 0:
                i_rev = n - i - 1
                temporal = i_rev < ntu if cfg.legacy_mode else 0 < i_rev < ntu + 1
                spatial = temporal or (i_rev < nsu and nsu > ntu)
                up = HybridUpsample(block_in, spatial, temporal, **kw) if spatial or temporal else None
            levels[i] = _Level(blocks, "upsample", up)
        self.up = nnx.List(levels)
        self.norm_out = CausalNormalize(block_in)
        self.conv_out = factorized_pair(block_in, cfg.out_channels * cfg.patch_size**3, **kw)

    def __call__(self, z_NThwC: jax.Array) -> jax.Array:
        cfg = self.config
        _check_video(cfg, 1 + (z_NThwC.shape[1] - 1) * cfg.temporal_compression,
                     *(s * cfg.spatial_compression for s in z_NThwC.shape[2:4]), "decode")
        h = run(self.conv_in, self.post_quant_conv(z_NThwC.astype(jnp.dtype(cfg.dtype))))
        h = self.mid(h)
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if level.upsample is not None:
                h = level.upsample(h)
        h = run(self.conv_out, swish(self.norm_out(h)))
        return haar_unpatch(h.astype(jnp.float32), cfg.patch_size)  # fp32 out, like the fp32 Haar in


def abstract(cfg: Cosmos8x8x8Config) -> tuple[CosmosEncoder, CosmosDecoder]:
    """The encoder and decoder with ShapeDtypeStructs instead of arrays (weights/tokenizer.py fills them)."""
    with nnx.use_eager_sharding(False):
        return (nnx.eval_shape(lambda: CosmosEncoder(cfg, rngs=nnx.Rngs(0))),
                nnx.eval_shape(lambda: CosmosDecoder(cfg, rngs=nnx.Rngs(0))))
