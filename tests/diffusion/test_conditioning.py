"""Conditioning masks, augmentation and text dropout (docs/upstream.md §5.3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cosmos_jax.diffusion import conditioning as cd
from cosmos_jax.diffusion import denoise as dn
from cosmos_jax.diffusion import edm


def test_first_cam():
    ind = np.asarray(cd.condition_indicator("first_cam", 3, 8))
    assert ind.shape == (3, 8)
    assert ind[0].all() and not ind[1:].any()


@pytest.mark.parametrize("n", [0, 1, 2])
def test_first_cam_and_random_n(n):
    ind = np.asarray(cd.condition_indicator("first_cam_and_random_n", 3, 8, n))
    want = np.zeros((3, 8))
    want[0] = 1
    want[:, :n] = 1  # overlap with view 0 is clamped to 1
    np.testing.assert_array_equal(ind, want)


def test_fixed_cams():
    ind = np.asarray(cd.condition_indicator("fixed_cam_0_2", 4, 3))
    np.testing.assert_array_equal(ind[:, 0], [1, 0, 1, 0])
    ind = np.asarray(cd.condition_indicator("fixed_cam_and_first_n_1", 3, 3, 1))
    np.testing.assert_array_equal(ind, [[1, 0, 0], [1, 1, 1], [1, 0, 0]])
    with pytest.raises(ValueError, match="condition_location='last_cam'"):
        cd.condition_indicator("last_cam", 3, 3)


def test_random_n_is_uniform_over_0_to_tmax():
    draws = np.concatenate([np.asarray(cd.sample_num_condition_t(jax.random.key(i), 64, 2)) for i in range(60)])
    counts = np.bincount(draws, minlength=3)
    assert draws.shape == (3840,) and set(draws) == {0, 1, 2}
    chi2 = float((((counts - len(draws) / 3) ** 2) / (len(draws) / 3)).sum())
    assert chi2 < 13.8  # 2 degrees of freedom, p = 0.001
    ind = cd.training_indicator(jax.random.key(0), "first_cam", 4, 3, 8, 0)
    want = np.broadcast_to(cd.condition_indicator("first_cam", 3, 8), (4, 3, 8))
    np.testing.assert_array_equal(np.asarray(ind), want)
    with pytest.raises(ValueError, match="training supports"):
        cd.training_indicator(jax.random.key(0), "fixed_cam_1", 4, 3, 8, 0)


def n_of(ind_BVT):
    """Per-sample n back from a first_cam_and_random_n indicator: the conditioned frames of view 1."""
    return ind_BVT[:, 1].sum(-1).astype(int)


def test_training_indicator_draws_n_per_sample():
    t_max, b, v, t = 2, 64, 3, 8
    ind = np.asarray(cd.training_indicator(jax.random.key(7), "first_cam_and_random_n", b, v, t, t_max))
    assert ind.shape == (b, v, t)
    n_B = n_of(ind)
    assert len(set(n_B.tolist())) > 1 and n_B.min() >= 0 and n_B.max() <= t_max
    for i in range(b):  # each sample is exactly the indicator of its own n; view 0 (first_cam) always conditioned
        np.testing.assert_array_equal(ind[i], np.asarray(cd.condition_indicator("first_cam_and_random_n", v, t,
                                                                                int(n_B[i]))))
    assert ind[:, 0].all()
    # over many draws every n in {0..t_max} is equally likely, per sample
    f = jax.jit(lambda k: cd.training_indicator(k, "first_cam_and_random_n", b, v, t, t_max))
    all_n = np.concatenate([n_of(np.asarray(f(jax.random.key(i)))) for i in range(50)])
    freq = np.bincount(all_n, minlength=t_max + 1) / len(all_n)
    assert len(freq) == t_max + 1 and np.all(np.abs(freq - 1 / (t_max + 1)) < 0.04)


def test_augment_sigma_distribution():
    s = np.asarray(cd.sample_augment_sigma(jax.random.key(3), 100_000))
    assert abs(np.log(s).mean() + 3.0) < 0.03 and abs(np.log(s).std() - 2.0) < 0.03
    assert np.median(s) == pytest.approx(np.exp(-3.0), rel=0.05)


def test_augmented_condition_is_what_the_network_sees():
    k1, k2 = jax.random.split(jax.random.key(0))
    gt = jax.random.normal(k1, (2, 3, 2, 4, 4, 16))
    noise = jax.random.normal(k2, gt.shape)
    sigma = jnp.array([3.0, 0.7])
    s_aug = jnp.array([0.05, 0.2])
    aug = cd.augment_condition(gt, noise, s_aug, sigma)
    net_in = edm.scale_input(aug, sigma)
    want0 = edm.c_in(0.05) * (gt[0] + 0.05 * noise[0])
    np.testing.assert_allclose(net_in[0], want0, rtol=1e-5, atol=1e-6)


def test_compose_and_condition_region_replaced():
    ind = cd.condition_indicator("first_cam", 2, 2)[None]
    a, b = jnp.ones((1, 2, 2, 1, 1, 1)), jnp.zeros((1, 2, 2, 1, 1, 1))
    out = np.asarray(cd.compose(ind, a, b))[0, :, :, 0, 0, 0]
    np.testing.assert_array_equal(out, [[1, 1], [0, 0]])


def test_text_dropout_per_sample_across_views():
    text = jnp.ones((4000, 3, 2, 2))
    out = np.asarray(cd.text_dropout(jax.random.key(5), text, 0.2))
    per_sample = out.reshape(4000, -1)
    assert set(np.unique(per_sample.min(1) + per_sample.max(1))) <= {0.0, 2.0}  # all views dropped together
    assert abs((per_sample.max(1) == 0).mean() - 0.2) < 0.02
    np.testing.assert_array_equal(np.asarray(cd.text_dropout(jax.random.key(5), text, 0.0)), np.asarray(text))


def test_denoise_with_condition_replaces_region_and_uses_augmented_input():
    captured = {}

    class FakeNet:
        def net(self, x_in, c_noise, text, mask, view, fps, rep, pad):
            captured["x_in"] = x_in
            return jnp.full_like(x_in, 3.0)

        def logvar(self, c):
            return jnp.zeros_like(c)

    gt = jnp.full((1, 2, 2, 1, 1, 1), 5.0)
    x_t = jnp.full_like(gt, -1.0)
    ind = cd.condition_indicator("first_cam", 2, 2)[None]
    aug = jnp.full_like(gt, 7.0)
    cond = dn.Condition(jnp.zeros((1, 2, 1, 1)), jnp.zeros((1, 2, 2), jnp.int32), jnp.ones(1), jnp.zeros((1, 2)), ind)
    sigma = jnp.array([2.0])
    pred = dn.denoise_with_condition(FakeNet(), x_t, sigma, cond, ind, gt, aug)
    x0 = np.asarray(pred.x0)[0, :, :, 0, 0, 0]
    np.testing.assert_array_equal(x0[0], [5, 5])  # condition region = ground truth
    gen = float(edm.c_skip(2.0) * -1.0 + edm.c_out(2.0) * 3.0)
    np.testing.assert_allclose(x0[1], [gen, gen], rtol=1e-6)
    net_in = np.asarray(captured["x_in"])[0, :, :, 0, 0, 0]
    np.testing.assert_allclose(net_in[0], edm.c_in(2.0) * 7.0, rtol=1e-6)
    np.testing.assert_allclose(net_in[1], edm.c_in(2.0) * -1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(pred.eps), (np.asarray(x_t) - np.asarray(pred.x0)) / 2.0, rtol=1e-6)


def test_micro_loss_conditions_each_sample_on_its_own_n(monkeypatch):
    from types import SimpleNamespace

    from cosmos_jax import step

    seen = {}

    def fake_denoise(model, x_t, sigma_B, cond, indicator_BVT, gt, aug, sigma_data):
        seen["indicator"], seen["mask"] = np.asarray(indicator_BVT), np.asarray(cond.input_mask_BVT)
        return dn.Prediction(gt, jnp.zeros_like(gt), jnp.zeros(gt.shape[0]))

    monkeypatch.setattr(step, "nnx", SimpleNamespace(merge=lambda *a: None))
    monkeypatch.setattr(step.dn, "denoise_with_condition", fake_denoise)
    cfg = step.StepConfig(sigma_data=0.5, p_mean=0.0, p_std=1.0, loss_add_logvar=True,
                          condition_location="first_cam_and_random_n", random_n_max=2, augment=True, aug_p_mean=-3.0,
                          aug_p_std=2.0, aug_multiplier=1.0, text_dropout=0.0, force_finite=True, ema_enabled=False,
                          ema_gamma=0.0)
    b, v, t = 32, 3, 4
    batch = {"latents": jnp.ones((b, v, t, 2, 2, 16)), "text": jnp.ones((b, v, 5, 8)),
             "view_idx": jnp.zeros((b, v), jnp.int32), "fps": jnp.full((b,), 10.0), "frame_repeat": jnp.zeros((b, v))}
    step.micro_loss(None, None, None, batch, jax.random.key(0), cfg, None)
    ind = seen["indicator"]
    assert ind.shape == (b, v, t) and np.array_equal(seen["mask"], ind) and ind[:, 0].all()
    n_B = n_of(ind)
    assert len(set(n_B.tolist())) > 1 and set(n_B.tolist()) <= {0, 1, 2}
