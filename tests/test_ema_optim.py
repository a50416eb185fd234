"""Power EMA, the LambdaLinear schedule, AdamW decay on every parameter, force_finite."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import waymo
from cosmos_jax import ema, optim


def test_power_gamma_and_beta():
    g = ema.power_gamma(0.1)
    assert g == pytest.approx(6.937, abs=1e-3)
    s = 0.1  # gamma solves s^2 = (g + 1) / ((g + 2)^2 (g + 3)) (EDM2 Eq. 3)
    assert (g + 1) / ((g + 2) ** 2 * (g + 3)) == pytest.approx(s**2, rel=1e-9)
    assert float(ema.power_beta(0, g)) == 0.0
    assert float(ema.power_beta(10, g)) == pytest.approx((1 - 1 / 11) ** (g + 1), rel=1e-6)
    assert float(ema.power_beta(10, g)) == pytest.approx(0.47, abs=0.01)
    assert float(ema.power_beta(100, g)) == pytest.approx(0.924, abs=0.001)
    assert float(ema.power_beta(2000, g)) == pytest.approx(0.996, abs=0.001)


def test_ema_update_restarts_from_weights():
    e = {"w": jnp.zeros(3)}
    p = {"w": jnp.ones(3)}
    assert np.all(ema.update(e, p, ema.power_beta(0, 6.9))["w"] == 1.0)
    np.testing.assert_allclose(ema.update(e, p, 0.25)["w"], 0.75)


def test_lambda_linear_matches_upstream():
    c = waymo.get_config()
    o = c.optim
    f = lambda n: float(optim.lambda_linear(n, o.warmup_steps, o.f_start, o.f_max, o.f_min, float(o.cycle_length)))  # noqa: E731
    assert f(0) == pytest.approx(1e-6)
    assert f(2000) == pytest.approx((1 - 1e-6) / 2500 * 2000 + 1e-6)  # ~0.8: warm-up never finishes by 2000
    assert f(2500) == pytest.approx(1.0)
    assert f(1e6) == pytest.approx(1.0)
    sched = optim.schedule(c)
    assert float(sched(1250)) == pytest.approx(2**-14.3 * ((1 - 1e-6) / 2 + 1e-6), rel=1e-5)


def test_adamw_decays_every_parameter_and_clips():
    c = waymo.get_config()
    c.optim.warmup_steps = 1
    c.optim.f_start = 1.0
    tx = optim.make(c)
    params = {"norm_scale": jnp.ones(4), "kernel": jnp.full((2, 2), 2.0)}
    state = tx.init(params)
    grads = jax.tree.map(jnp.zeros_like, params)
    upd, _ = tx.update(grads, state, params)
    lr = 2**-14.3
    np.testing.assert_allclose(upd["norm_scale"], -lr * 0.1 * 1.0, rtol=1e-5)
    np.testing.assert_allclose(upd["kernel"], -lr * 0.1 * 2.0, rtol=1e-5)
    big = {"norm_scale": jnp.full(4, 100.0), "kernel": jnp.zeros((2, 2))}
    clipped = optax.clip_by_global_norm(1.0).update(big, None)[0]
    assert float(optax.tree.norm(clipped)) == pytest.approx(1.0, rel=1e-5)


def test_force_finite_zeroes_and_counts():
    g = {"a": jnp.array([1.0, jnp.nan, jnp.inf]), "b": jnp.array([[-jnp.inf, 2.0]])}
    out, n = optim.force_finite(g)
    assert int(n) == 3
    np.testing.assert_array_equal(out["a"], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(out["b"], [[0.0, 2.0]])
