"""The video tokenizer interface (upstream §3) and the weight-free `haar` tokenizer.

Interface, as upstream's `VideoJITTokenizer` + the diffusion model's encode/decode:
  encode: pixels uint8 [B, V, F, H, W, 3] -> per view, chunks of `pixel_chunk_duration` frames -> raw latents
          [B, V, T, H/8, W/8, 16] with T = (F - 1)/8 + 1 per chunk -> (raw - mean[c, t]) / std[c, t] * sigma_data
  decode: the inverse.
Pixels are normalised to [-1, 1] as `x / 127.5 - 1` (upstream training). mean/std are per channel and per latent
frame index within a chunk (upstream reshapes mean_std.pt to [16, 8]).

`haar`: a fixed, causal 8x8x8 transform. Each latent frame t >= 1 covers pixel frames 8t-7 .. 8t (latent 0 covers
frame 0, replicated 8 times, as the causal Cosmos tokenizer treats its first frame). Per 8x8x8 block, RGB is turned
into one luma and two chroma channels; luma keeps the 8 coefficients of an orthonormal 2x2x2 Haar transform of its
4x4x4 means, each chroma channel keeps its 4 coefficients of a 2x2 spatial Haar of its 4x4 (time-averaged) means:
16 channels. Decode is the exact inverse on that subspace (piecewise-constant within the 4x4x4 cells).

`cosmos`: Cosmos-Tokenize1-CV8x8x8-720p in Flax (cosmos_jax/models/cosmos_tokenizer.py) on the weights that
`python -m converters.tokenizer_to_orbax` wrote to `tokenizer.checkpoint_dir`, run in `tokenizer.dtype`. The
Tokenizer a config names is built by cosmos_jax/weights/tokenizer.py's `from_config`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

# RGB -> (Y, Cb, Cr), orthonormal rows so that the inverse is the transpose.
_YUV = np.array([[1, 1, 1], [1, -1, 0], [1, 1, -2]], np.float64)
_YUV = (_YUV / np.linalg.norm(_YUV, axis=1, keepdims=True)).astype(np.float32)
# Orthonormal 2-point Haar.
_H2 = (np.array([[1, 1], [1, -1]], np.float64) / np.sqrt(2)).astype(np.float32)


def pixels_to_unit(video_u8):
    """uint8 -> float32 in [-1, 1] (upstream `x / 127.5 - 1`)."""
    return video_u8.astype(jnp.float32) / 127.5 - 1.0


def unit_to_pixels(x):
    return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def latent_frames(num_frames: int, compression: int = 8) -> int:
    if (num_frames - 1) % compression:
        raise ValueError(f"{num_frames} frames: the causal tokenizer needs 1 + {compression}k frames per chunk")
    return (num_frames - 1) // compression + 1


def _causal_blocks(x_NFHWC):
    """[N, 1+8k, H, W, C] -> [N, 1+k, 8, H, W, C]: frame 0 replicated 8 times, then groups of 8."""
    first = jnp.repeat(x_NFHWC[:, :1], 8, axis=1)
    rest = x_NFHWC[:, 1:]
    n, f, h, w, c = rest.shape
    return jnp.concatenate([first[:, None], rest.reshape(n, f // 8, 8, h, w, c)], axis=1)


def haar_encode(x_NFHWC):
    """Unit-range pixels [N, F, H, W, 3] -> raw latents [N, T, H/8, W/8, 16]."""
    n, f, h, w, _ = x_NFHWC.shape
    if h % 8 or w % 8:
        raise ValueError(f"haar tokenizer needs H and W divisible by 8, got {h}x{w}")
    yuv = jnp.einsum("...c,dc->...d", x_NFHWC, _YUV)
    blk = _causal_blocks(yuv)  # N T 8 H W 3
    t = blk.shape[1]
    cells = blk.reshape(n, t, 2, 4, h // 8, 2, 4, w // 8, 2, 4, 3).mean(axis=(3, 6, 9))  # N T a Hb b Wb c 3
    cells = cells.transpose(0, 1, 3, 5, 2, 4, 6, 7)  # N T Hb Wb a b c 3
    # Orthonormal Haar over (a, b, c); the 4x4x4 means carry a factor 8 = sqrt(64) of the block's energy.
    coef = jnp.einsum("...abcd,ia,jb,kc->...ijkd", cells, _H2, _H2, _H2) * 8.0
    luma = coef[..., 0].reshape(n, t, h // 8, w // 8, 8)
    chroma = coef[..., 0, :, :, 1:].reshape(n, t, h // 8, w // 8, 4, 2)  # temporal low-pass, 2x2 spatial
    chroma = chroma.transpose(0, 1, 2, 3, 5, 4).reshape(n, t, h // 8, w // 8, 8)
    return jnp.concatenate([luma, chroma], axis=-1)


def haar_decode(z_NThwC):
    """Raw latents [N, T, h, w, 16] -> unit-range pixels [N, 1 + 8(T-1), 8h, 8w, 3]."""
    n, t, hb, wb, _ = z_NThwC.shape
    luma = z_NThwC[..., :8].reshape(n, t, hb, wb, 2, 2, 2)
    chroma = z_NThwC[..., 8:].reshape(n, t, hb, wb, 2, 2, 2).transpose(0, 1, 2, 3, 5, 6, 4)  # b c d
    coef = jnp.zeros((n, t, hb, wb, 2, 2, 2, 3), z_NThwC.dtype)
    coef = coef.at[..., 0].set(luma).at[..., 0, :, :, 1:].set(chroma)
    cells = jnp.einsum("...ijkd,ia,jb,kc->...abcd", coef, _H2, _H2, _H2) / 8.0  # N T Hb Wb a b c 3
    blk = jnp.broadcast_to(cells[:, :, :, :, :, None, :, None, :, None, :],
                           (n, t, hb, wb, 2, 4, 2, 4, 2, 4, 3))
    blk = blk.transpose(0, 1, 4, 5, 2, 6, 7, 3, 8, 9, 10).reshape(n, t, 8, hb * 8, wb * 8, 3)
    frames = jnp.concatenate([blk[:, 0, :1], blk[:, 1:].reshape(n, (t - 1) * 8, hb * 8, wb * 8, 3)], axis=1)
    return jnp.einsum("...d,dc->...c", frames, _YUV)


@dataclasses.dataclass(frozen=True)
class LatentNorm:
    """Raw tokenizer latents <-> the diffusion model's final latents, the one place this is written (edm2's
    `encode_latents` / `decode_latents`): final = (raw - mean[c, t]) / std[c, t] * sigma_data, where t is the latent
    frame's index within its chunk. Works on numpy and jax arrays [..., T, h, w, C] (T a multiple of the chunk)."""

    mean_CT: np.ndarray  # [C, T_chunk]
    std_CT: np.ndarray
    sigma_data: float

    def _stats(self, shape) -> tuple[np.ndarray, np.ndarray]:
        """mean and std broadcastable to [..., T, h, w, C]."""
        t, tc = shape[-4], self.mean_CT.shape[1]
        if t % tc:
            raise ValueError(f"{t} latent frames: latents are normalised in whole chunks of {tc}")
        tile = lambda a_CT: np.tile(np.asarray(a_CT, np.float32).T, (t // tc, 1))[:, None, None, :]  # noqa: E731
        return tile(self.mean_CT), tile(self.std_CT)

    def encode_latents(self, raw_TLC):
        mean, std = self._stats(raw_TLC.shape)
        return (raw_TLC - mean) / std * self.sigma_data

    def decode_latents(self, final_TLC):
        mean, std = self._stats(final_TLC.shape)
        return final_TLC / self.sigma_data * std + mean


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """Encode/decode with chunking and the per-channel-per-latent-frame normalisation (`norm`)."""

    encode_raw: callable  # [N, F, H, W, 3] unit pixels -> [N, T, h, w, C]
    decode_raw: callable
    mean_CT: np.ndarray  # [C, T_chunk]
    std_CT: np.ndarray
    pixel_chunk_duration: int
    sigma_data: float = 0.5
    temporal_compression: int = 8
    spatial_compression: int = 8

    @property
    def latent_chunk(self) -> int:
        return latent_frames(self.pixel_chunk_duration, self.temporal_compression)

    @property
    def norm(self) -> LatentNorm:
        return LatentNorm(self.mean_CT, self.std_CT, self.sigma_data)

    def _chunks(self, f: int) -> int:
        if f % self.pixel_chunk_duration:
            raise ValueError(f"{f} frames per view: encoding works in whole chunks of {self.pixel_chunk_duration}")
        return f // self.pixel_chunk_duration

    def encode_pixels(self, video_BVFHW3):
        """uint8 pixels [B, V, F, H, W, 3] -> raw latents [B, V, T, h, w, C], chunk by chunk."""
        b, v, f, h, w, _ = video_BVFHW3.shape
        k = self._chunks(f)
        x = pixels_to_unit(video_BVFHW3).reshape(b * v * k, self.pixel_chunk_duration, h, w, 3)
        z = self.encode_raw(x)  # (B V K) Tc h w C
        return z.reshape(b, v, k * z.shape[1], *z.shape[2:])

    def decode_to_pixels(self, raw_BVThwC):
        """Raw latents [B, V, T, h, w, C] -> uint8 pixels [B, V, F, H, W, 3], chunk by chunk."""
        b, v, t, hh, ww, c = raw_BVThwC.shape
        tc = self.latent_chunk
        if t % tc:
            raise ValueError(f"{t} latent frames per view: decoding works in whole chunks of {tc}")
        x = self.decode_raw(raw_BVThwC.reshape(b * v * (t // tc), tc, hh, ww, c))
        return unit_to_pixels(x.reshape(b, v, -1, *x.shape[2:]))

    def encode(self, video_BVFHW3):
        """uint8 pixels [B, V, F, H, W, 3] -> final latents [B, V, T, h, w, C] (normalised, x sigma_data)."""
        return self.norm.encode_latents(self.encode_pixels(video_BVFHW3))

    def decode(self, z_BVThwC):
        """Final latents -> uint8 pixels [B, V, F, H, W, 3]."""
        return self.decode_to_pixels(self.norm.decode_latents(z_BVThwC))

    def roundtrip(self, video_BVFHW3):
        """uint8 pixels encoded and decoded again: the closest to the real video that a generator working in this
        tokenizer's latent space can come (the ceiling of its fidelity and consistency scores)."""
        return self.decode(self.encode(video_BVFHW3))


# Per-channel std of raw haar latents, measured on the synthetic rig's videos (DC luma ~10, coarse details ~2,
# fine details ~0.2): the normalised latents then have std ~1 before the x sigma_data (0.5), as upstream's
# mean_std.pt makes them. Means are left at 0 (content dependent). Fixed constants: the tokenizer stays weight-free.
_HAAR_STD = np.array([10.0, 2.0, 2.0, 0.7, 2.0, 0.6, 0.4, 0.15, 2.0, 0.35, 0.35, 0.18, 3.5, 0.55, 0.55, 0.25],
                     np.float32)


def haar_tokenizer(pixel_chunk_duration: int, sigma_data: float = 0.5) -> Tokenizer:
    tc = latent_frames(pixel_chunk_duration)
    return Tokenizer(encode_raw=haar_encode, decode_raw=haar_decode, mean_CT=np.zeros((16, tc), np.float32),
                     std_CT=np.repeat(_HAAR_STD[:, None], tc, axis=1), pixel_chunk_duration=pixel_chunk_duration,
                     sigma_data=sigma_data)


def psnr(a_u8, b_u8) -> float:
    mse = float(jnp.mean((a_u8.astype(jnp.float32) - b_u8.astype(jnp.float32)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


__all__ = ["LatentNorm", "Tokenizer", "haar_tokenizer", "psnr", "jax"]
