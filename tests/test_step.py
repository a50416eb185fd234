"""The jitted train step: gradient accumulation, force_finite, clipping, AdamW and the EMA, checked against the
same operations done by hand."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import demo
from cosmos_jax import ema as ema_lib
from cosmos_jax import optim, sharding
from cosmos_jax import step as step_lib
from cosmos_jax import train_state as ts
from cosmos_jax.models import build
from cosmos_jax.weights import tokenizer as tok


@pytest.fixture(scope="module")
def setup():
    c = demo.get_config()
    c.model.update(dict(model_channels=32, num_blocks=1, num_heads=2, crossattn_emb_channels=8, adaln_lora_dim=8))
    c.data.video_size = (16, 16)
    cfg = build.dit_config(c)
    tx = optim.make(c)
    mesh = sharding.make_mesh(c.mesh, devices=jax.devices()[:1])
    graphdef, _, shardings = ts.layout(cfg, tx, mesh)
    state = ts.create(cfg, tx, mesh, shardings)
    scfg = step_lib.StepConfig.from_config(c)
    return c, graphdef, tx, scfg, tok.from_config(c), state


def batch(accum=2, b=1, v=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"video": jnp.asarray(rng.integers(0, 255, (accum, b, v, 9, 16, 16, 3)), jnp.uint8),
            "text": jnp.asarray(rng.standard_normal((accum, b, v, 512, 8)), jnp.float32),
            "view_idx": jnp.asarray(np.broadcast_to([0, 1, 2], (accum, b, v)), jnp.int32),
            "fps": jnp.full((accum, b), 10.0), "frame_repeat": jnp.zeros((accum, b, v))}


def test_accumulated_step_equals_manual_update(setup):
    c, graphdef, tx, scfg, tokenizer, state = setup
    bt, key = batch(), jax.random.key(3)
    step = jax.jit(functools.partial(step_lib.train_step, graphdef=graphdef, tx_parts=optim.parts(c), cfg=scfg,
                                     tokenizer=tokenizer))
    new, metrics = step(state, bt, key)
    keys = jax.random.split(key, 2)
    grad = jax.jit(jax.grad(lambda p, mb, k: step_lib.micro_loss(p, state["buffers"], graphdef, mb, k, scfg,
                                                                 tokenizer)[0]))  # one compile for both
    grads = [grad(state["params"], jax.tree.map(lambda a, i=i: a[i], bt), keys[i]) for i in range(2)]
    mean = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
    upd, _ = tx.update(mean, state["opt_state"], state["params"])
    want = optax.apply_updates(state["params"], upd)
    for a, b in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert float(metrics["grad_norm"]) == pytest.approx(float(optax.tree.norm(mean)), rel=1e-5)
    assert int(new["step"]) == 1
    # EMA at step 0 restarts from the weights: beta(0) = 0
    for a, b in zip(jax.tree.leaves(new["ema"]), jax.tree.leaves(new["params"]), strict=True):
        np.testing.assert_array_equal(a, b)
    new2, _ = step(new, batch(seed=1), jax.random.key(4))
    beta = float(ema_lib.power_beta(1, scfg.ema_gamma))
    leaf = lambda t: t["net"]["x_embedder"]["kernel"]  # noqa: E731
    np.testing.assert_allclose(leaf(new2["ema"]), beta * leaf(new["ema"]) + (1 - beta) * leaf(new2["params"]),
                               rtol=1e-6, atol=1e-7)


def test_non_finite_gradients_are_zeroed_and_counted(setup):
    c, graphdef, tx, scfg, tokenizer, state = setup
    bt = batch(accum=1)
    bt["text"] = bt["text"].at[0, 0, 1, 0, 0].set(jnp.nan)  # poisons the cross-attention gradients
    step = jax.jit(functools.partial(step_lib.train_step, graphdef=graphdef, tx_parts=optim.parts(c), cfg=scfg,
                                     tokenizer=tokenizer))
    new, metrics = step(state, bt, jax.random.key(0))
    assert int(metrics["nonfinite_grads"]) > 0
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(new["params"]))
