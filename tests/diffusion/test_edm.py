"""EDM functions against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cosmos_jax.diffusion import edm


def test_preconditioning_at_sigma_data():
    s = jnp.float32(0.5)  # sigma = sigma_data
    assert float(edm.c_skip(s)) == pytest.approx(0.5)
    assert float(edm.c_out(s)) == pytest.approx(0.5 / math.sqrt(2))
    assert float(edm.c_in(s)) == pytest.approx(1 / (0.5 * math.sqrt(2)))
    assert float(edm.loss_weight(s)) == pytest.approx(2 / 0.5**2)  # 2 / sigma_d^2
    assert float(edm.c_noise(jnp.float32(math.e**4))) == pytest.approx(1.0)


def test_preconditioning_at_sigma_2():
    s = jnp.float32(2.0)  # sigma^2 + sigma_d^2 = 4.25
    assert float(edm.c_skip(s)) == pytest.approx(0.25 / 4.25)
    assert float(edm.c_out(s)) == pytest.approx(1.0 / math.sqrt(4.25))
    assert float(edm.c_in(s)) == pytest.approx(1 / math.sqrt(4.25))
    assert float(edm.loss_weight(s)) == pytest.approx(4.25 / 1.0)


def test_precondition_and_unprecondition_invert():
    k1, k2 = jax.random.split(jax.random.key(0))
    x_t = jax.random.normal(k1, (2, 3, 4))
    x0 = jax.random.normal(k2, (2, 3, 4))
    sigma = jnp.array([0.1, 7.0])
    f = edm.unprecondition(x0, x_t, sigma)
    np.testing.assert_allclose(edm.precondition(f, x_t, sigma), x0, rtol=1e-5, atol=1e-5)
    # D = c_skip x + c_out F, per sample
    np.testing.assert_allclose(edm.precondition(jnp.ones_like(x_t), x_t, sigma)[1],
                               edm.c_skip(7.0) * x_t[1] + edm.c_out(7.0), rtol=1e-6)


def test_sigma_distribution_log_normal():
    s = edm.sample_sigma(jax.random.key(1), (200_000,), p_mean=0.0, p_std=1.0)
    ln = np.log(np.asarray(s))
    assert abs(ln.mean()) < 0.01 and abs(ln.std() - 1.0) < 0.01
    s2 = edm.sample_sigma(jax.random.key(1), (200_000,), p_mean=-3.0, p_std=2.0)
    assert abs(np.log(np.asarray(s2)).mean() + 3.0) < 0.02


def test_kendall_loss_by_hand():
    x0 = jnp.zeros((2, 1, 1, 1, 1, 2))
    pred = jnp.ones((2, 1, 1, 1, 1, 2)) * jnp.array([1.0, 2.0]).reshape(2, 1, 1, 1, 1, 1)
    sigma = jnp.array([0.5, 2.0])
    logvar = jnp.array([0.0, math.log(2.0)])
    # sample 0: w=8, err 1 -> 8 * 1 * exp(0) + 0 = 8 ; sample 1: w=4.25, err 4 -> 17 / 2 + ln 2
    want = (8.0 * 2 + (17.0 / 2 + math.log(2.0)) * 2) / 4
    loss, mse = edm.kendall_loss(x0, pred, sigma, logvar)
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert float(mse) == pytest.approx((8.0 * 2 + 17.0 * 2) / 4, rel=1e-6)
    plain, _ = edm.kendall_loss(x0, pred, sigma, logvar, add_logvar=False)
    assert float(plain) == pytest.approx((8.0 * 2 + 17.0 * 2) / 4, rel=1e-6)
