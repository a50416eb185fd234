"""The same training on 1 device and on 4- and 8-device meshes (each axis alone and all combined), at the same
global batch: per-step losses (3 steps) and the final weights agree to fp32 round-off (CPU, forced host devices)."""

import jax
import numpy as np
import pytest

from configs import demo
from cosmos_jax import optim, sharding
from cosmos_jax import step as step_lib
from cosmos_jax import train_state as ts
from cosmos_jax.models import build
from cosmos_jax.weights import tree

MESHES = {"1 device": (1, 1, 1), "data=4": (4, 1, 1), "fsdp=4": (1, 4, 1), "context=4": (1, 1, 4),
          "data=2 fsdp=2 context=2": (2, 2, 2)}
BATCH = 4


def config(**model):
    c = demo.get_config()
    c.model.update(dict(model_channels=64, num_blocks=2, num_heads=4, crossattn_emb_channels=8, adaln_lora_dim=8))
    c.model.update(model)
    c.remat = "attention_outside"
    return c


def host_batch(steps=3, b=BATCH, v=3, seed=0):
    rng = np.random.default_rng(seed)  # 3 views x 2 x 4 x 4 latents: 24 tokens, so context=4 splits inside views
    return [{"latents": rng.standard_normal((1, b, v, 2, 4, 4, 16)).astype(np.float32),
             "text": rng.standard_normal((1, b, v, 512, 8)).astype(np.float32),
             "view_idx": np.broadcast_to(np.arange(v, dtype=np.int32), (1, b, v)).copy(),
             "fps": np.full((1, b), 10.0, np.float32), "frame_repeat": np.zeros((1, b, v), np.float32)}
            for _ in range(steps)]


def perturbed(state, shardings):
    """Every trained weight (and, with LoRA, every frozen base kernel) moved by N(0, 0.02): the zero-initialised
    adaLN and final layers would otherwise make the first losses independent of the network body. The same values on
    every mesh (partitionable threefry)."""
    def move(t, seed, only_kernels=False):
        flat = tree.flat(t)
        keys = jax.random.split(jax.random.key(seed), len(flat))
        return tree.unflat({p: a + 0.02 * jax.random.normal(k, a.shape, a.dtype)
                          if not only_kernels or p[-1] == "kernel" else a
                          for (p, a), k in zip(flat.items(), keys, strict=True)})
    params = jax.jit(lambda t: move(t, 7), out_shardings=shardings["params"])(state["params"])
    buffers = jax.jit(lambda t: move(t, 8, only_kernels=True), out_shardings=shardings["buffers"])(state["buffers"])
    return {**state, "params": params, "buffers": buffers, "ema": jax.tree.map(jax.numpy.copy, params)}


def run(shape, lora=False, **model):
    """(per-step losses, final params) of 3 steps on a (data, fsdp, context) mesh over the first devices; `model`
    overrides config.model (scripts/gpu_parity.py runs this on GPUs in bf16 with cuDNN); `lora`: rank-4 adapters on
    every block linear, the base frozen."""
    c = config(**model)
    if lora:
        c.lora.rank, c.lora.alpha = 4, 4.0
        c.lora.targets = ("to_q", "to_k", "to_v", "to_out", "layer1", "layer2")
    c.mesh = tuple(zip(sharding.MESH_AXES, shape, strict=True))
    n = int(np.prod(shape))
    mesh = sharding.make_mesh(c.mesh, devices=jax.devices()[:n])
    cfg, tx = build.dit_config(c), optim.make(c)
    graphdef, _, shardings = ts.layout(cfg, tx, mesh)
    state = perturbed(ts.create(cfg, tx, mesh, shardings, seed=0), shardings)
    batch_sh = sharding.batch_sharding(mesh, leading_axes=1)
    with sharding.activate(mesh):
        step = step_lib.jit_train_step(shardings, batch_sh, graphdef=graphdef, tx_parts=optim.parts(c),
                                       cfg=step_lib.StepConfig.from_config(c), tokenizer=None)
        losses = []
        for i, hb in enumerate(host_batch()):
            state, m = step(state, sharding.put_batch(hb, batch_sh, BATCH), jax.random.key(i))
            losses.append(float(m["loss"]))
    # the parameters really are split: a block kernel's shard is 1/(fsdp*context) of it
    kernel = state["buffers" if lora else "params"]["net"]["blocks"]["mlp"]["mlp"]["layer1"]["kernel"]
    assert kernel.addressable_shards[0].data.size == kernel.size // (shape[1] * shape[2])
    return losses, tree.flat(sharding.to_host(state["params"]))


@pytest.fixture(scope="module")
def reference():
    return run(MESHES["1 device"])


@pytest.mark.parametrize("name", [k for k in MESHES if k != "1 device"])
def test_meshes_train_like_one_device(reference, name):
    losses, params = run(MESHES[name])
    np.testing.assert_allclose(losses, reference[0], rtol=2e-5)
    assert len(set(reference[0])) == 3  # each step saw updated weights
    for p, a in reference[1].items():
        np.testing.assert_allclose(params[p], a, rtol=1e-4, atol=2e-6, err_msg="/".join(p))


def test_lora_on_a_combined_mesh_trains_like_one_device():
    want_losses, want = run(MESHES["1 device"], lora=True)
    losses, params = run((1, 2, 2), lora=True)
    assert set(p[-1] for p in params) == {"lora_a", "lora_b"}  # only adapters train
    np.testing.assert_allclose(losses, want_losses, rtol=2e-5)
    for p, a in want.items():
        np.testing.assert_allclose(params[p], a, rtol=1e-4, atol=2e-6, err_msg="/".join(p))
