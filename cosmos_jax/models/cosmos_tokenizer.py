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
`norm.bias` -> `bias` (`torch_key_table`). Converted weights: `python -m converters.tokenizer_to_orbax`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
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
from cosmos_jax.weights import tree

FORMAT = "cosmos_jax.cosmos_tokenizer/1"
# Constant buffers of the JIT files (the Haar filters): dropped by the converter.
BUFFER_KEYS = ("encoder.patcher3d.wavelets", "encoder.patcher3d._arange", "encoder.patcher3d.patch_size_buffer",
               "decoder.unpatcher3d.wavelets", "decoder.unpatcher3d._arange")


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


# --------------------------------------------------------------------------------------------------------------------
# Torch keys <-> our paths.

def abstract(cfg: Cosmos8x8x8Config) -> tuple[CosmosEncoder, CosmosDecoder]:
    with nnx.use_eager_sharding(False):
        return (nnx.eval_shape(lambda: CosmosEncoder(cfg, rngs=nnx.Rngs(0))),
                nnx.eval_shape(lambda: CosmosDecoder(cfg, rngs=nnx.Rngs(0))))


def torch_key_table(cfg: Cosmos8x8x8Config) -> dict[str, dict[str, tuple[str, tuple[int, ...]]]]:
    """{"encoder"|"decoder": {torch key: (our dotted path, torch shape)}} for the JIT file of that side."""
    out = {}
    for side, model in zip(("encoder", "decoder"), abstract(cfg), strict=True):
        shapes = {p: tuple(v.get_value().shape) for p, v in tree.flat_vars(model, dotted=True).items()}
        table = {}
        for path, shape in shapes.items():
            mod, leaf = path.rsplit(".", 1)
            prefix = "" if mod in ("quant_conv", "post_quant_conv") else side + "."
            if f"{mod}.kernel" in shapes:  # a CausalConv3d
                key = f"{prefix}{mod}.conv3d.{'weight' if leaf == 'kernel' else 'bias'}"
                tshape = (shape[4], shape[3], *shape[:3]) if leaf == "kernel" else shape
            else:  # a CausalNormalize
                key, tshape = f"{prefix}{mod}.norm.{'weight' if leaf == 'scale' else 'bias'}", shape
            table[key] = (path, tshape)
        out[side] = table
    return out


def unused_hybrid_keys(cfg: Cosmos8x8x8Config) -> dict[str, tuple[str, ...]]:
    """Keys the older Cosmos-Tokenizer code exports for no-op (or partial) resample modules: never used, dropped."""
    table, n = torch_key_table(cfg), len(cfg.channels_mult)
    sides = {"encoder": [f"encoder.down.{i}.downsample" for i in range(n - 1)],
             "decoder": [f"decoder.up.{i}.upsample" for i in range(1, n)]}
    return {side: tuple(k for m in mods for j in (1, 2, 3) for leaf in ("weight", "bias")
                        if (k := f"{m}.conv{j}.conv3d.{leaf}") not in table[side]) for side, mods in sides.items()}


def torch_to_ours(key: str, value: np.ndarray) -> np.ndarray:
    """PyTorch Conv3d weight (out, in, kT, kH, kW) -> kernel (kT, kH, kW, in, out); everything else unchanged."""
    return np.transpose(value, (2, 3, 4, 1, 0)) if key.endswith("conv3d.weight") else value


def read_meta(checkpoint_dir: str) -> dict:
    marker = os.path.join(checkpoint_dir, "meta.json")
    if not os.path.isfile(marker):
        raise FileNotFoundError(f"tokenizer.checkpoint_dir={checkpoint_dir!r}: no meta.json, not a converted "
                                "tokenizer; convert the release with python -m converters.tokenizer_to_orbax "
                                f"--src <dir with encoder.jit, decoder.jit, mean_std.pt> --dst {checkpoint_dir}")
    with open(marker) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{marker}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load(checkpoint_dir: str, dtype: str = "bfloat16", **exec_overrides):
    """(config, encoder, decoder, mean [C, T], std [C, T]) from a converter output folder; params cast to dtype."""
    import orbax.checkpoint as ocp

    meta = read_meta(checkpoint_dir)
    cfg = Cosmos8x8x8Config(**meta["config"], dtype=dtype, **exec_overrides)
    state = ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join(checkpoint_dir, "state")))
    enc, dec = abstract(cfg)
    src = os.path.join(checkpoint_dir, "state")
    enc = tree.fill(enc, tree.flat(state["encoder"], dotted=True), f"{src} encoder (tokenizer config)",
                         dotted=True, dtype=jnp.dtype(dtype))
    dec = tree.fill(dec, tree.flat(state["decoder"], dotted=True), f"{src} decoder (tokenizer config)",
                         dotted=True, dtype=jnp.dtype(dtype))
    mean, std = (np.asarray(state[k], np.float32) for k in ("mean", "std"))
    return cfg, enc, dec, mean, std


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x):
    return nnx.merge(graphdef, state)(x).astype(jnp.float32)


def tokenizer(checkpoint_dir: str, pixel_chunk_duration: int, sigma_data: float = 0.5, dtype: str = "bfloat16",
              expect: Mapping[str, int] | None = None):
    """A `Tokenizer` running the converted Cosmos tokenizer in `dtype`; mean/std sliced to the chunk's latent frames
    (upstream `view(16, -1)[:, :latent_chunk]`) and, like upstream's bf16 buffers, rounded to `dtype`.
    `expect`: {config key: value} (latent_channels, temporal_compression, spatial_compression) to check."""
    from cosmos_jax.models.tokenizer import Tokenizer, latent_frames

    cfg, enc, dec, mean, std = load(checkpoint_dir, dtype)
    for key, want in (expect or {}).items():
        if getattr(cfg, key) != want:
            raise ValueError(f"tokenizer.{key}={want} but {checkpoint_dir}/meta.json has {key}={getattr(cfg, key)}")
    tc = latent_frames(pixel_chunk_duration, cfg.temporal_compression)
    if mean.shape[1] < tc:
        raise ValueError(f"{checkpoint_dir}: mean/std have {mean.shape[1]} latent frames, tokenizer."
                         f"pixel_chunk_duration={pixel_chunk_duration} needs {tc}")
    rnd = lambda a: np.asarray(jnp.asarray(a[:, :tc], jnp.dtype(dtype)), np.float32)  # noqa: E731
    enc_def, enc_state = nnx.split(enc)
    dec_def, dec_state = nnx.split(dec)
    return Tokenizer(encode_raw=functools.partial(_apply, enc_def, enc_state),
                     decode_raw=functools.partial(_apply, dec_def, dec_state),
                     mean_CT=rnd(mean), std_CT=rnd(std), pixel_chunk_duration=pixel_chunk_duration,
                     sigma_data=sigma_data, temporal_compression=cfg.temporal_compression,
                     spatial_compression=cfg.spatial_compression)
