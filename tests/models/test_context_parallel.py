"""Ulysses self-attention and per-view cross-attention with the sequence split over the `context` axis (8 CPU
devices) equal the unsplit computation; the whole DiT forward too."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cosmos_jax import sharding
from cosmos_jax.models import build
from cosmos_jax.models import context_parallel as cp
from cosmos_jax.models.attention import attention
from tests.conftest import tiny_dit_config


def mesh_of(data=1, fsdp=1, context=1):
    n = data * fsdp * context
    return sharding.make_mesh((("data", data), ("fsdp", fsdp), ("context", context)), devices=jax.devices()[:n])


def rand(key, shape):
    return jax.random.normal(jax.random.key(key), shape, jnp.float32)


@pytest.mark.parametrize("mesh_kw", [dict(context=2), dict(context=4), dict(context=8),
                                     dict(data=2, context=4), dict(fsdp=2, context=2)])
def test_ulysses_self_attention_equals_dense(mesh_kw):
    q, k, v = rand(0, (2, 48, 8, 4)), rand(1, (2, 48, 8, 4)), rand(2, (2, 48, 8, 4))
    want = attention(q, k, v, "xla")
    with sharding.activate(mesh_of(**mesh_kw)):
        got = jax.jit(lambda q, k, v: cp.self_attention(q, k, v, "xla"))(q, k, v)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("context", [2, 3, 4, 6])  # 48 tokens, 3 views of 16: straddling (2, 4) and aligned (3, 6)
def test_per_view_cross_attention_under_the_split(context):
    q = rand(0, (2, 48, 12, 4))
    k, v = rand(1, (2, 3, 5, 12, 4)), rand(2, (2, 3, 5, 12, 4))
    want = np.concatenate([np.asarray(attention(q[:, i * 16:(i + 1) * 16], k[:, i], v[:, i], "xla"))
                           for i in range(3)], axis=1)
    np.testing.assert_allclose(np.asarray(cp.per_view_cross_attention(q, k, v, "xla")), want, rtol=1e-5, atol=1e-6)
    with sharding.activate(mesh_of(context=context)):
        got = jax.jit(lambda q, k, v: cp.per_view_cross_attention(q, k, v, "xla"))(q, k, v)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_heads_not_divisible_by_context_is_explained():
    q = rand(0, (1, 48, 6, 4))
    with sharding.activate(mesh_of(context=4)), pytest.raises(ValueError, match="context=4 must divide the 6"):
        jax.jit(lambda q: cp.self_attention(q, q, q, "xla"))(q)


def test_dit_forward_is_the_same_on_a_context_and_fsdp_mesh():
    cfg = tiny_dit_config(num_heads=4)
    net = build.create(cfg, seed=3).net
    # non-zero adaLN and final layer so that every path counts
    for path, var in nnx.to_flat_state(nnx.state(net, nnx.Param)):
        if "adaln" in "/".join(map(str, path)) or "final_layer" in "/".join(map(str, path)):
            var[...] = 0.05 * rand(len(path), var[...].shape)
    graphdef, state = nnx.split(net)
    b, v, t, h, w = 2, 3, 2, 8, 8
    args = (rand(10, (b, v, t, h, w, 16)), jnp.array([0.1, -0.3]), rand(11, (b, v, 7, 32)),
            jnp.zeros((b, v, t)).at[:, 0].set(1.0), jnp.broadcast_to(jnp.arange(v)[:, None], (b, v, t)),
            jnp.full((b,), 10.0), jnp.zeros((b, v)))
    fwd = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))
    want = np.asarray(fwd(state, *args))
    for mesh_kw in (dict(context=4), dict(fsdp=2, context=2), dict(data=2, context=2)):
        with sharding.activate(mesh_of(**mesh_kw)):
            sharded = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))
            assert "all_to_all" in sharded.lower(state, *args).as_text()  # Ulysses is really in the program
            got = np.asarray(sharded(state, *args))
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=str(mesh_kw))
