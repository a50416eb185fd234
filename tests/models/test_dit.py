"""The DiT's shapes and execution modes (tiny config, CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cosmos_jax.models import build
from cosmos_jax.models import embeddings as emb
from cosmos_jax.weights import dit
from tests.conftest import tiny_dit_config


def inputs(b=2, v=3, t=2, h=8, w=8, s=512, e=32, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    return dict(
        x_BVTHWC=jax.random.normal(k[0], (b, v, t, h, w, 16)),
        c_noise_B=jax.random.normal(k[1], (b,)) * 0.5,
        text_BVSE=jax.random.normal(k[2], (b, v, s, e)),
        cond_mask_BVT=jnp.zeros((b, v, t)).at[:, 0].set(1.0),
        view_idx_BVT=jnp.broadcast_to(jnp.array([0, 1, 2, 4, 5, 6])[:v, None], (b, v, t)),
        fps_B=jnp.full((b,), 10.0),
        frame_repeat_BV=jnp.zeros((b, v)),
    )


def randomize(model, seed=1):
    """Non-zero weights everywhere (the zero-initialised adaLN/final layers would hide bugs)."""
    tree = dit.arrays(model)
    rng = np.random.default_rng(seed)
    dit.fill(model, {p: (rng.standard_normal(a.shape) * 0.2).astype(a.dtype) for p, a in tree.items()})
    return model


F32_REL_TOL = 1e-5  # ~84 float32 eps; measured scan/loop and merged/unmerged differences are 4-10 eps (see below)


def assert_close_f32(actual, desired, rel=F32_REL_TOL):
    """Two float32 evaluations of one function in different but equivalent orders agree to `rel` x max|desired|.

    The rounding error of each output element is set by the size of the terms summed into it (every element mixes
    all D features and all tokens), not by its own value: near-zero outputs carry the same absolute error as the
    largest ones, so an elementwise rtol, or an atol fixed in absolute units, sits inside the float32 noise. On the
    tiny DiT (max|y| ~ 21) the scan and loop paths differ by 5-7e-7 x max|y| (1.0-1.5e-5 absolute, varying with
    the CPU's vector ISA and the jax release, bit-reproducible from run to run and under load), merged and
    unmerged LoRA by 0.8-1.1e-6 x max|y|; either path differs from a float64 evaluation by ~1.4e-6 x max|y|.
    A real difference is orders of magnitude larger: a LoRA merge scale off by 1% gives ~8e-3 x max|y|."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert actual.shape == desired.shape and np.all(np.isfinite(desired)) and np.all(np.isfinite(actual))
    scale = float(np.abs(desired).max())
    np.testing.assert_allclose(actual, desired, rtol=0, atol=rel * scale,
                               err_msg=f"tolerance {rel:g} x max|desired| = {rel:g} x {scale:.4g}")


@pytest.fixture(scope="module")
def model():
    return randomize(build.create(tiny_dit_config()))


def test_output_shape_and_views(model):
    for v in (1, 3, 6):
        y = model.net(**inputs(b=1, v=v))
        assert y.shape == (1, v, 2, 8, 8, 16)
        assert y.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(y)))


def test_scan_equals_loop(model):
    x = inputs()
    y_scan = model.net(**x)
    loop = build.create(tiny_dit_config(scan_blocks=False))
    dit.fill(loop, dit.arrays(model))
    assert dit.shapes(loop) == dit.shapes(model)  # one tree whatever the execution
    assert_close_f32(loop.net(**x), y_scan)


@pytest.mark.parametrize("policy", ["full", "dots", "attention_outside"])
def test_remat_same_loss_and_grads(model, policy):
    x = inputs(b=1)
    other = build.create(tiny_dit_config(remat=policy))
    dit.fill(other, dit.arrays(model))

    def loss_and_grad(m):
        graphdef, params, rest = nnx.split(m, nnx.Param, ...)

        def f(p):
            return jnp.mean(nnx.merge(graphdef, p, rest).net(**x) ** 2)

        return jax.value_and_grad(f)(params)

    l0, g0 = loss_and_grad(model)
    l1, g1 = loss_and_grad(other)
    assert float(l0) == pytest.approx(float(l1), rel=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_unknown_remat_policy_is_refused(model):
    bad = build.create(tiny_dit_config(remat="everything"))
    with pytest.raises(ValueError, match="model.remat='everything'"):
        bad.net(**inputs(b=1))


def test_bf16_close_to_fp32(model):
    x = inputs(b=1)
    half = build.create(tiny_dit_config(dtype="bfloat16"))
    dit.fill(half, dit.arrays(model))
    y32, y16 = model.net(**x), half.net(**x)
    assert float(jnp.abs(y16 - y32).max() / jnp.abs(y32).max()) < 5e-2
    assert bool(jnp.any(y16 != y32))


def test_view_embedding_and_repeat_frame_matter(model):
    x = inputs(b=1)
    y = model.net(**x)
    assert not np.allclose(y, model.net(**{**x, "view_idx_BVT": jnp.zeros_like(x["view_idx_BVT"])}))
    assert not np.allclose(y, model.net(**{**x, "frame_repeat_BV": jnp.ones_like(x["frame_repeat_BV"])}))
    assert not np.allclose(y, model.net(**{**x, "fps_B": jnp.full((1,), 24.0)}))
    # Out-of-range view ids clamp to the last row, as upstream.
    np.testing.assert_array_equal(model.net(**{**x, "view_idx_BVT": jnp.full_like(x["view_idx_BVT"], 6)}),
                                  model.net(**{**x, "view_idx_BVT": jnp.full_like(x["view_idx_BVT"], 99)}))


def test_text_must_match_views(model):
    x = inputs(b=1, v=3)
    with pytest.raises(ValueError, match="text embeddings"):
        model.net(**{**x, "text_BVSE": x["text_BVSE"][:, :2]})


def test_position_tables_restart_per_view():
    ang = emb.rope3d_angles(3, 2, 4, 4, jnp.array([10.0]), 64, (2.0, 1.0, 1.0)).reshape(1, 3, 32, 64)
    np.testing.assert_array_equal(ang[:, 0], ang[:, 1])
    np.testing.assert_array_equal(ang[:, 0], ang[:, 2])
    extra = emb.extra_sincos_embedding(3, 2, 4, 4, 128, (1.0, 1.0, 1.0)).reshape(3, 32, 128)
    np.testing.assert_array_equal(extra[0], extra[2])
    # time positions are t * 24 / fps: frame 1 of a 10 fps video sits at 2.4
    dim_t = emb.axis_split(64)[0]
    assert float(ang[0, 0, 16, 0]) == pytest.approx(2.4)  # token (t=1, h=0, w=0), first temporal frequency
    assert emb.axis_split(128) == (44, 42, 42) and emb.axis_split(4096) == (1368, 1364, 1364) and dim_t == 24
    assert emb.ntk_theta(2.0, 44) == pytest.approx(10000 * 2 ** (44 / 42))
