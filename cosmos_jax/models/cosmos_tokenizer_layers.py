"""Building blocks of the Cosmos-Tokenize1 causal video tokenizer (docs/tokenizer-t5.md §1.2, §1.6), Flax NNX.

Every tensor is channels-last [N, T, H, W, C]. Parameter names follow the upstream modules so that the key table in
`cosmos_tokenizer.py` is a fixed rename: a `CausalConv3d` holds `kernel` (kT, kH, kW, in, out) = torch `conv3d.weight`
transposed (2, 3, 4, 1, 0) and `bias`; a `CausalNormalize` holds `scale` / `bias` = torch `norm.weight` / `norm.bias`.
Sequentials (the factorized conv pairs, `mid.attn_1`) are `nnx.List`s, so their indices stay in the paths.

Parameters may be stored in any float dtype; every layer computes in its `dtype` (norm statistics and softmax in fp32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_DN = ("NDHWC", "DHWIO", "NDHWC")
_kernel_init = nnx.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=())


def swish(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(x)


class CausalConv3d(nnx.Module):
    """Upstream `CausalConv3d`: prepend `time_pad = (kT - 1) + (1 - time_stride)` copies of the first frame, zero-pad
    H and W by `padding` on each side, then a VALID conv with strides (time_stride, stride, stride)."""

    def __init__(self, cin: int, cout: int, kernel_size: tuple[int, int, int], *, rngs: nnx.Rngs, dtype,
                 stride: int = 1, time_stride: int = 1, padding: int = 0):
        kt, kh, kw = kernel_size
        self.kernel = nnx.Param(_kernel_init(rngs.params(), (kt, kh, kw, cin, cout), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))
        self.time_pad = (kt - 1) + (1 - time_stride)
        if self.time_pad < 0:
            raise ValueError(f"CausalConv3d kernel {kernel_size} with time_stride {time_stride}: negative time pad")
        self.padding = padding
        self.strides = (time_stride, stride, stride)
        self.pointwise = tuple(kernel_size) == (1, 1, 1) and stride == 1 and time_stride == 1 and padding == 0
        self.dtype = dtype

    def __call__(self, x_NTHWC: jax.Array) -> jax.Array:
        x = x_NTHWC.astype(self.dtype)
        k = self.kernel[...].astype(self.dtype)
        if self.pointwise:
            y = jnp.einsum("nthwi,io->nthwo", x, k[0, 0, 0])
        else:
            if self.time_pad:
                x = jnp.concatenate([jnp.repeat(x[:, :1], self.time_pad, axis=1), x], axis=1)
            if self.padding:
                p = self.padding
                x = jnp.pad(x, ((0, 0), (0, 0), (p, p), (p, p), (0, 0)))
            y = jax.lax.conv_general_dilated(x, k, self.strides, "VALID", dimension_numbers=_DN)
        return y + self.bias[...].astype(self.dtype)


def factorized_pair(cin: int, cout: int, *, rngs: nnx.Rngs, dtype) -> nnx.List:
    """`nn.Sequential(CausalConv3d(cin, cout, (1,3,3), padding=1), CausalConv3d(cout, cout, (3,1,1), padding=0))`."""
    return nnx.List([CausalConv3d(cin, cout, (1, 3, 3), padding=1, rngs=rngs, dtype=dtype),
                     CausalConv3d(cout, cout, (3, 1, 1), padding=0, rngs=rngs, dtype=dtype)])


def run(seq: nnx.List, x: jax.Array) -> jax.Array:
    for m in seq:
        x = m(x)
    return x


class CausalNormalize(nnx.Module):
    """GroupNorm(1, C, eps=1e-6) per frame: mean and biased variance over (H, W, C) of each (n, t), in fp32."""

    def __init__(self, c: int, eps: float = 1e-6):
        self.scale = nnx.Param(jnp.ones((c,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((c,), jnp.float32))
        self.eps = eps

    def __call__(self, x_NTHWC: jax.Array) -> jax.Array:
        x = x_NTHWC.astype(jnp.float32)
        mean = jnp.mean(x, axis=(2, 3, 4), keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=(2, 3, 4), keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x_NTHWC.dtype)


class ResnetBlock(nnx.Module):
    """`CausalResnetBlockFactorized3d`: norm1, swish, conv1 pair, norm2, swish, conv2 pair; + nin_shortcut(x)."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs, dtype):
        self.norm1 = CausalNormalize(cin)
        self.conv1 = factorized_pair(cin, cout, rngs=rngs, dtype=dtype)
        self.norm2 = CausalNormalize(cout)
        self.conv2 = factorized_pair(cout, cout, rngs=rngs, dtype=dtype)
        self.nin_shortcut = CausalConv3d(cin, cout, (1, 1, 1), rngs=rngs, dtype=dtype) if cin != cout else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = run(self.conv1, swish(self.norm1(x)))
        h = run(self.conv2, swish(self.norm2(h)))  # dropout p=0
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)).astype(h.dtype) + h


def attend(q_BLC: jax.Array, k_BLC: jax.Array, v_BLC: jax.Array, causal: bool, query_chunk: int) -> jax.Array:
    """Single-head softmax attention, scale C^-0.5, scores and softmax in fp32; the queries go `query_chunk` at a time
    (the exact result, without the [B, L, L] score matrix of a 9216-token 720p frame)."""
    b, length, c = q_BLC.shape
    scale = c ** -0.5

    def block(q_BQC, offset):
        s = jnp.einsum("bqc,bkc->bqk", q_BQC, k_BLC, preferred_element_type=jnp.float32) * scale
        if causal:
            qi = offset + jnp.arange(q_BQC.shape[1])[:, None]
            s = jnp.where(jnp.arange(length)[None, :] <= qi, s, -jnp.inf)
        p = jax.nn.softmax(s, axis=-1).astype(v_BLC.dtype)
        return jnp.einsum("bqk,bkc->bqc", p, v_BLC)

    if length <= query_chunk:
        return block(q_BLC, 0)
    n = -(-length // query_chunk)
    q = jnp.pad(q_BLC, ((0, 0), (0, n * query_chunk - length), (0, 0)))
    q = q.reshape(b, n, query_chunk, c).transpose(1, 0, 2, 3)
    out = jax.lax.map(lambda a: block(a[0], a[1]), (q, jnp.arange(n) * query_chunk))
    return out.transpose(1, 0, 2, 3).reshape(b, n * query_chunk, c)[:, :length]


class _Attention(nnx.Module):
    def __init__(self, c: int, *, rngs: nnx.Rngs, dtype, query_chunk: int):
        self.norm = CausalNormalize(c)
        self.q = CausalConv3d(c, c, (1, 1, 1), rngs=rngs, dtype=dtype)
        self.k = CausalConv3d(c, c, (1, 1, 1), rngs=rngs, dtype=dtype)
        self.v = CausalConv3d(c, c, (1, 1, 1), rngs=rngs, dtype=dtype)
        self.proj_out = CausalConv3d(c, c, (1, 1, 1), rngs=rngs, dtype=dtype)
        self.query_chunk = query_chunk


class SpatialAttention(_Attention):
    """`CausalAttnBlock`: per frame, attention over the H*W tokens; residual."""

    def __call__(self, x_NTHWC: jax.Array) -> jax.Array:
        n, t, h, w, c = x_NTHWC.shape
        hn = self.norm(x_NTHWC)
        q, k, v = (m(hn).reshape(n * t, h * w, c) for m in (self.q, self.k, self.v))
        o = attend(q, k, v, causal=False, query_chunk=self.query_chunk).reshape(n, t, h, w, c)
        return x_NTHWC.astype(o.dtype) + self.proj_out(o)


class TemporalAttention(_Attention):
    """`CausalTemporalAttnBlock`: per pixel, attention over the T frames with a lower-triangular mask; residual."""

    def __call__(self, x_NTHWC: jax.Array) -> jax.Array:
        n, t, h, w, c = x_NTHWC.shape
        hn = self.norm(x_NTHWC)
        q, k, v = (m(hn).transpose(0, 2, 3, 1, 4).reshape(n * h * w, t, c) for m in (self.q, self.k, self.v))
        o = attend(q, k, v, causal=True, query_chunk=self.query_chunk)
        o = o.reshape(n, h, w, t, c).transpose(0, 3, 1, 2, 4)
        return x_NTHWC.astype(o.dtype) + self.proj_out(o)


class HybridDownsample(nnx.Module):
    """`CausalHybridDownsample3d` (cosmos-predict1: conv1/conv2 only where that kind of downsampling is on)."""

    def __init__(self, c: int, spatial: bool, temporal: bool, *, rngs: nnx.Rngs, dtype):
        kw = dict(rngs=rngs, dtype=dtype)
        self.conv1 = CausalConv3d(c, c, (1, 3, 3), stride=2, padding=0, **kw) if spatial else None
        self.conv2 = CausalConv3d(c, c, (3, 1, 1), time_stride=2, padding=0, **kw) if temporal else None
        self.conv3 = CausalConv3d(c, c, (1, 1, 1), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.conv1 is not None:
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))  # bottom row, right column
            n, t, h, w, c = x.shape
            pooled = x[:, :, : h // 2 * 2, : w // 2 * 2].reshape(n, t, h // 2, 2, w // 2, 2, c)
            x = self.conv1(x) + jnp.mean(pooled.astype(jnp.float32), axis=(3, 5)).astype(x.dtype)
        if self.conv2 is not None:
            x = jnp.concatenate([x[:, :1], x], axis=1)  # one more first frame; conv2 adds its own
            n, t, h, w, c = x.shape
            pooled = x[:, : t // 2 * 2].reshape(n, t // 2, 2, h, w, c)
            x = self.conv2(x) + jnp.mean(pooled.astype(jnp.float32), axis=2).astype(x.dtype)
        return self.conv3(x)


class HybridUpsample(nnx.Module):
    """`CausalHybridUpsample3d`: T -> 2T - 1 (repeat x2, drop the first; T=1 stays), conv1 residual; nearest x2 in
    H and W, conv2 residual; conv3. No transposed conv."""

    def __init__(self, c: int, spatial: bool, temporal: bool, *, rngs: nnx.Rngs, dtype):
        kw = dict(rngs=rngs, dtype=dtype)
        self.conv1 = CausalConv3d(c, c, (3, 1, 1), padding=0, **kw) if temporal else None
        self.conv2 = CausalConv3d(c, c, (1, 3, 3), padding=1, **kw) if spatial else None
        self.conv3 = CausalConv3d(c, c, (1, 1, 1), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.conv1 is not None:
            f = 2 if x.shape[1] > 1 else 1
            x = jnp.repeat(x, f, axis=1)[:, f - 1:]
            x = self.conv1(x) + x.astype(self.conv1.dtype)
        if self.conv2 is not None:
            x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
            x = self.conv2(x) + x.astype(self.conv2.dtype)
        return self.conv3(x)


# Haar wavelet patcher (§1.6). One 3-D DWT level maps [N, T, H, W, C] -> [N, T/2, H/2, W/2, 8C] with channel
# band*C + c, bands [lll, llh, lhl, lhh, hll, hlh, hhl, hhh] (letters T, H, W): band = 1/8 sum(sign * x) over the
# 2x2x2 block, sign + for l, and for h + on the even element and - on the odd one.
_H2 = np.array([[1.0, 1.0], [1.0, -1.0]], np.float32)


def _dwt(x_NTHWC: jax.Array) -> jax.Array:
    n, t, h, w, c = x_NTHWC.shape
    blk = x_NTHWC.reshape(n, t // 2, 2, h // 2, 2, w // 2, 2, c)
    hh = jnp.asarray(_H2, x_NTHWC.dtype)
    out = jnp.einsum("ntihjwkc,ai,bj,dk->nthwabdc", blk, hh, hh, hh) * jnp.asarray(0.125, x_NTHWC.dtype)
    return out.reshape(n, t // 2, h // 2, w // 2, 8 * c)


def _idwt(x_NTHWC: jax.Array) -> jax.Array:
    n, t, h, w, c8 = x_NTHWC.shape
    c = c8 // 8
    bands = x_NTHWC.reshape(n, t, h, w, 2, 2, 2, c)
    hh = jnp.asarray(_H2, x_NTHWC.dtype)
    out = jnp.einsum("nthwabdc,ai,bj,dk->ntihjwkc", bands, hh, hh, hh)
    return out.reshape(n, 2 * t, 2 * h, 2 * w, c)


def haar_patch(x_NTHWC: jax.Array, patch_size: int) -> jax.Array:
    """`Patcher3D`: repeat frame 0 `patch_size` times (T -> T + p - 1), then log2(p) DWT levels on all channels."""
    x = jnp.concatenate([jnp.repeat(x_NTHWC[:, :1], patch_size - 1, axis=1), x_NTHWC], axis=1)
    for _ in range(int(np.log2(patch_size))):
        x = _dwt(x)
    return x


def haar_unpatch(x_NTHWC: jax.Array, patch_size: int) -> jax.Array:
    """`UnPatcher3D`: the exact inverse of `haar_patch`'s DWTs, then the first p - 1 frames dropped."""
    x = x_NTHWC
    for _ in range(int(np.log2(patch_size))):
        x = _idwt(x)
    return x[:, patch_size - 1:]
