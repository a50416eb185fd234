"""Upstream's EDM Euler sampler: the sigma schedule, guidance and the pinned condition region."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cosmos_jax.diffusion import conditioning as cd
from cosmos_jax.diffusion import edm, sampler


def test_karras_schedule_35_steps():
    s = sampler.karras_sigmas(35)
    assert s.shape == (36,) and s.dtype == np.float32
    assert s[0] == pytest.approx(80.0) and s[34] == pytest.approx(0.0002, rel=1e-5) and s[35] == 0.0
    assert np.all(np.diff(s) < 0)
    # the midpoint by hand: (80^(1/7) + 0.5 (0.0002^(1/7) - 80^(1/7)))^7
    mid = (80 ** (1 / 7) + 0.5 * (0.0002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert s[17] == pytest.approx(mid, rel=1e-6)
    assert sampler.init_noise_sigma(80.0) == pytest.approx(math.sqrt(6401))


def const_x0_network(value):
    """A network whose denoised output is `value` everywhere, for both passes."""
    def net(x_in, c_noise_B):
        sigma = jnp.exp(4 * c_noise_B)
        x = x_in / edm.c_in(sigma).reshape(-1, 1, 1, 1, 1, 1)
        f = edm.unprecondition(jnp.full_like(x, value), x, sigma)
        return f, f
    return net


def test_sampler_returns_the_denoised_target_and_pins_condition():
    gt = jnp.full((1, 3, 2, 2, 2, 4), 0.7)
    ind = cd.condition_indicator("first_cam", 3, 2)[None]
    out = np.asarray(sampler.sample(const_x0_network(-0.3), jax.random.key(0), gt, ind, guidance=7.0, num_steps=5))
    np.testing.assert_allclose(out[0, 0], 0.7, rtol=1e-5)  # condition region = the encoded condition
    np.testing.assert_allclose(out[0, 1:], -0.3, rtol=1e-4, atol=1e-5)


def test_guidance_on_raw_output_and_guidance_zero_is_conditional():
    """F = F_c + g (F_c - F_u) on the raw output; g = 0 gives the conditional pass alone."""
    calls = []

    def net(x_in, c_noise_B):
        calls.append(1)
        return jnp.full_like(x_in, 2.0), jnp.full_like(x_in, 0.5)

    gt = jnp.zeros((1, 2, 1, 1, 1, 1))
    ind = jnp.zeros((1, 2, 1))
    x = jnp.ones_like(gt)
    sigma, nxt = 10.0, 5.0
    for g in (0.0, 7.0):
        _, x0 = sampler.euler_step(net, x, sigma, nxt, gt, ind, g)
        f = 2.0 + g * (2.0 - 0.5)
        np.testing.assert_allclose(np.asarray(x0), edm.c_skip(sigma) * 1.0 + edm.c_out(sigma) * f, rtol=1e-6)


def test_euler_step_matches_diffusers_formula():
    def net(x_in, c_noise_B):
        return x_in * 0.1, x_in * 0.1

    x = jnp.linspace(-1, 1, 8).reshape(1, 2, 1, 2, 2, 1)
    gt, ind = jnp.zeros_like(x), jnp.zeros((1, 2, 1))
    s, s_next = 3.0, 1.5
    x_next, x0 = sampler.euler_step(net, x, s, s_next, gt, ind, 7.0)
    f = edm.c_in(s) * x * 0.1
    want_x0 = edm.c_skip(s) * x + edm.c_out(s) * f
    np.testing.assert_allclose(x0, want_x0, rtol=1e-6)
    np.testing.assert_allclose(x_next, x + (x - want_x0) / s * (s_next - s), rtol=1e-6)


def test_same_seed_same_sample():
    gt = jnp.zeros((1, 2, 1, 2, 2, 2))
    ind = cd.condition_indicator("first_cam", 2, 1)[None]

    def net(x_in, c):
        return jnp.tanh(x_in), 0.5 * jnp.tanh(x_in)

    a = sampler.sample(net, jax.random.key(4), gt, ind, num_steps=4)
    b = sampler.sample(net, jax.random.key(4), gt, ind, num_steps=4)
    c = sampler.sample(net, jax.random.key(5), gt, ind, num_steps=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
