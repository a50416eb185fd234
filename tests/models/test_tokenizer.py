"""The tokenizer interface and the weight-free haar tokenizer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cosmos_jax.models import tokenizer as tok
from cosmos_jax.weights import tokenizer as tokenizer_weights


def blocky_video(key, n=2, f=17, h=16, w=24):
    """Piecewise constant on the haar cells (4 frames x 4 x 4 px; chroma constant over each 8-frame block)."""
    k1, k2 = jax.random.split(key)
    lum = jax.random.uniform(k1, (n, 1 + (f - 1) // 4, h // 4, w // 4), minval=-0.5, maxval=0.5)
    chroma = jax.random.uniform(k2, (n, 1 + (f - 1) // 8, h // 4, w // 4, 2), minval=-0.2, maxval=0.2)
    lum_f = jnp.concatenate([lum[:, :1], jnp.repeat(lum[:, 1:], 4, axis=1)], axis=1)
    ch_f = jnp.concatenate([chroma[:, :1], jnp.repeat(chroma[:, 1:], 8, axis=1)], axis=1)
    yuv = jnp.concatenate([lum_f[..., None], ch_f], axis=-1)
    yuv = jnp.repeat(jnp.repeat(yuv, 4, axis=2), 4, axis=3)
    return jnp.einsum("...d,dc->...c", yuv, tok._YUV)


def test_haar_shapes_and_exact_on_its_subspace():
    x = blocky_video(jax.random.key(0))
    z = tok.haar_encode(x)
    assert z.shape == (2, 3, 2, 3, 16)
    np.testing.assert_allclose(tok.haar_decode(z), x, atol=1e-5)


def test_haar_is_causal():
    x = jax.random.uniform(jax.random.key(1), (1, 17, 16, 16, 3), minval=-1, maxval=1)
    z = tok.haar_encode(x)
    y = x.at[:, 9:].set(0.0)  # change frames after 8: latent frames 0 and 1 must not move
    z2 = tok.haar_encode(y)
    np.testing.assert_array_equal(z[:, :2], z2[:, :2])
    assert not np.allclose(z[:, 2], z2[:, 2])


def test_tokenizer_chunks_normalises_and_inverts():
    t = tok.haar_tokenizer(pixel_chunk_duration=9)
    x = blocky_video(jax.random.key(2), n=6, f=9, h=16, w=16)
    video = tok.unit_to_pixels(x).reshape(1, 3, 18, 16, 16, 3)  # 2 chunks of 9 frames per view
    z = t.encode(video)
    assert z.shape == (1, 3, 4, 2, 2, 16)
    np.testing.assert_array_equal(z[:, :, :2], t.encode(video[:, :, :9]))  # chunks encoded independently
    back = t.decode(z)
    assert back.shape == video.shape and back.dtype == jnp.uint8
    assert tok.psnr(back, video) > 40
    with pytest.raises(ValueError, match="whole chunks of 9"):
        t.encode(video[:, :, :10])


def test_roundtrip_is_the_projection_onto_what_the_latents_hold():
    """`roundtrip` (the ceiling of a generator in latent space): textured pixels lose their detail, once; pixels
    already on the tokenizer's subspace pass (to uint8 rounding)."""
    t = tok.haar_tokenizer(pixel_chunk_duration=9)
    video = jax.random.randint(jax.random.key(3), (1, 2, 9, 16, 24, 3), 0, 256).astype(jnp.uint8)
    once = t.roundtrip(video)
    assert once.shape == video.shape and once.dtype == jnp.uint8
    assert tok.psnr(once, video) < 20  # noise lives outside the 4x4x4 cells' means
    twice = t.roundtrip(once)
    assert int(jnp.max(jnp.abs(twice.astype(jnp.int32) - once.astype(jnp.int32)))) <= 2


def test_latent_norm_per_frame_in_chunk_numpy_and_jax():
    """final = (raw - mean[c, t]) / std[c, t] * sigma_data with t the frame's index in its chunk; decode inverts it;
    numpy and jax agree (to an ulp: XLA may fuse the division); Tokenizer.encode is encode_pixels followed by it."""
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=(16, 2)).astype(np.float32), rng.uniform(0.5, 2, (16, 2)).astype(np.float32)
    norm = tok.LatentNorm(mean, std, 0.5)
    raw = rng.normal(size=(3, 4, 2, 3, 16)).astype(np.float32)  # V, T (2 chunks of 2), h, w, C
    final = norm.encode_latents(raw)
    for t in range(4):  # frame t uses row t % 2 of the statistics
        np.testing.assert_allclose(final[:, t], (raw[:, t] - mean[:, t % 2]) / std[:, t % 2] * 0.5, rtol=1e-6)
    np.testing.assert_allclose(norm.decode_latents(final), raw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(norm.encode_latents(jnp.asarray(raw))), final, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="whole chunks of 2"):
        norm.encode_latents(raw[:, :3])
    t = tok.haar_tokenizer(pixel_chunk_duration=9)
    video = tok.unit_to_pixels(blocky_video(jax.random.key(3), n=2, f=9, h=16, w=16)).reshape(1, 2, 9, 16, 16, 3)
    np.testing.assert_array_equal(t.encode(video), t.norm.encode_latents(t.encode_pixels(video)))
    assert float(jnp.abs(t.encode_pixels(video) - t.encode(video)).max()) > 0.1  # the normalisation is not a no-op


def test_psnr_on_smooth_video_is_reasonable():
    yy, xx = np.mgrid[0:32, 0:48]
    frames = np.stack([np.stack([(xx * 5 + f * 3) % 256, (yy * 7) % 256, (xx + yy + f) % 256], -1)
                       for f in range(9)]).astype(np.uint8)
    t = tok.haar_tokenizer(9)
    rec = t.decode(t.encode(jnp.asarray(frames)[None, None]))
    assert 15 < tok.psnr(rec[0, 0], frames) < 60


def test_unknown_tokenizer_is_refused():
    from configs import demo

    c = demo.get_config()
    c.tokenizer.name = "vqgan"
    with pytest.raises(ValueError, match="tokenizer.name='vqgan'"):
        tokenizer_weights.from_config(c)
