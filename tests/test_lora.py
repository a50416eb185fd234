"""LoRA: only the adapters train; merged and unmerged networks agree; exports."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from configs import demo
from cosmos_jax import lora, optim, sharding
from cosmos_jax import step as step_lib
from cosmos_jax import train_state as ts
from cosmos_jax.models import build
from cosmos_jax.weights import dit, export, keymap, tree
from tests.conftest import tiny_dit_config
from tests.models.test_dit import assert_close_f32, inputs

TARGETS = ("to_q", "to_k", "to_v", "to_out", "layer1", "layer2")


def test_targets_by_upstream_names():
    from cosmos_jax.models.blocks import lora_for

    spec = (4, 8.0, ("blocks.0.block.attn.to_q", "layer1"))
    assert lora_for(spec, "blocks.0.block.attn.to_q") == (4, 8.0)
    assert lora_for(spec, "blocks.1.block.attn.to_q") is None  # self-attention only
    assert lora_for(spec, "blocks.2.block.layer1") == (4, 8.0) and lora_for(spec, "blocks.2.block.layer2") is None
    m = build.abstract(tiny_dit_config(lora_rank=4, lora_alpha=8.0, lora_targets=("blocks.0.block.attn.to_q",)))
    paths = [p for p, v in nnx.to_flat_state(nnx.state(m)) if isinstance(v, nnx.LoRAParam)]
    assert {tuple(map(str, p)) for p in paths} == {("net", "blocks", "fa", "attn", "to_q", "lora_a"),
                                                   ("net", "blocks", "fa", "attn", "to_q", "lora_b")}


def test_merged_and_unmerged_forwards_agree():
    cfg = tiny_dit_config(lora_rank=4, lora_alpha=6.0, lora_targets=TARGETS)
    model = build.create(cfg)
    rng = np.random.default_rng(0)
    state = nnx.state(model)
    for _, v in nnx.to_flat_state(state):
        v.set_value(jnp.asarray(rng.standard_normal(v.get_value().shape) * 0.2, v.get_value().dtype))
    nnx.update(model, state)
    x = inputs(b=1)
    y_lora = model.net(**x)
    full = {tuple(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}
    merged = lora.merge(full, 6.0 / 4)
    plain = build.create(tiny_dit_config())
    dit.fill(plain, merged)
    assert_close_f32(plain.net(**x), y_lora)  # W + s A B rounded to fp32 vs x W + s (x A) B
    base = build.create(tiny_dit_config())
    dit.fill(base, {p: a for p, a in full.items() if p[-1] not in lora.LORA_LEAVES})
    assert not np.allclose(np.asarray(base.net(**x)), np.asarray(y_lora), atol=1e-3)  # the adapters matter


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    c = demo.get_config()
    c.model.update(dict(model_channels=32, num_blocks=2, num_heads=2, crossattn_emb_channels=8, adaln_lora_dim=8,
                        dtype="bfloat16"))
    c.lora.rank, c.lora.alpha, c.lora.targets = 4, 8.0, TARGETS
    cfg = build.dit_config(c)
    tx = optim.make(c)
    mesh = sharding.make_mesh(c.mesh, devices=jax.devices()[:1])
    graphdef, abstract, shardings = ts.layout(cfg, tx, mesh)
    state = ts.create(cfg, tx, mesh, shardings)
    rng = np.random.default_rng(0)
    # a pretrained-like base: non-zero everywhere (a zero-initialised final layer would stop every gradient)
    _, p, b = ts.split(build.create(dataclasses_replace(cfg)))
    base = {k: np.asarray(rng.standard_normal(a.shape) * 0.2, np.float32) for k, a in tree.flat(p).items()}
    base.update(tree.flat(jax.device_get(b)))
    state = ts.with_weights(state, {}, tree.unflat(base), shardings)
    bt = {"latents": jnp.asarray(rng.standard_normal((1, 1, 3, 2, 2, 2, 16)) * 0.5, jnp.float32),
          "text": jnp.asarray(rng.standard_normal((1, 1, 3, 512, 8)), jnp.float32),
          "view_idx": jnp.asarray([[[0, 1, 2]]], jnp.int32), "fps": jnp.full((1, 1), 10.0),
          "frame_repeat": jnp.zeros((1, 1, 3))}
    step = jax.jit(functools.partial(step_lib.train_step, graphdef=graphdef, tx_parts=optim.parts(c),
                                     cfg=step_lib.StepConfig.from_config(c), tokenizer=None))
    new = state
    for i in range(2):
        new, metrics = step(new, bt, jax.random.key(i))
    return c, cfg, state, new, abstract, shardings, metrics, tmp_path_factory.mktemp("lora")


def test_only_adapters_train(lora_run):
    c, cfg, before, after, abstract, shardings, metrics, _ = lora_run
    flat_p = tree.flat(before["params"])
    assert flat_p and all(p[-1] in lora.LORA_LEAVES for p in flat_p)  # the optimizer sees adapters only
    for p, a in tree.flat(before["buffers"]).items():  # frozen base and buffers: bit-identical after 2 steps
        np.testing.assert_array_equal(np.asarray(a), np.asarray(tree.flat(after["buffers"])[p]), err_msg=str(p))
    kern = tree.flat(before["buffers"])[("net", "blocks", "fa", "attn", "to_q", "kernel")]
    assert kern.dtype == jnp.bfloat16  # frozen base kept in the compute dtype
    b_path = ("net", "blocks", "mlp", "mlp", "layer1", "lora_b")
    assert not np.any(np.asarray(flat_p[b_path])) and np.any(np.asarray(tree.flat(after["params"])[b_path]))
    assert np.isfinite(float(metrics["loss"]))


def test_exports_merged_pt_and_adapters(lora_run, tmp_path):
    c, cfg, before, after, abstract, shardings, _, _ = lora_run
    reg, ema = export.export_pt(after, cfg.num_blocks, str(tmp_path), 2, lora_scale=cfg.lora_alpha / 4)
    sd = torch.load(ema, weights_only=True)
    table = keymap.torch_table(dit.shapes(build.abstract(cfg)), cfg.num_blocks)
    assert list(sd) == [k for k, _ in table]
    flat_all = {**tree.flat(jax.device_get(after["ema"])), **tree.flat(jax.device_get(after["buffers"]))}
    merged = lora.merge(flat_all, cfg.lora_alpha / 4)
    want = np.asarray(merged[("net", "blocks", "mlp", "mlp", "layer1", "kernel")][1], np.float32).T
    np.testing.assert_allclose(sd["net.blocks.block1.blocks.2.block.layer1.weight"].numpy(), want, rtol=1e-6)
    path = export.export_adapters(tree.flat(jax.device_get(after["params"])), cfg.num_blocks,
                                str(tmp_path / "adapters"), 4, cfg.lora_alpha, cfg.lora_targets)
    from safetensors.numpy import load_file

    ad = load_file(path)
    assert ad["net.blocks.block0.blocks.0.block.attn.to_q.0.lora_A.weight"].shape == (4, 32)
    assert ad["net.blocks.block1.blocks.2.block.layer2.lora_B.weight"].shape == (32, 4)
    assert len(ad) == 2 * 2 * (4 + 4 + 2)  # blocks x (A, B) x (fa 4 + ca 4 + mlp 2)
    assert json.load(open(str(tmp_path / "adapters.json")))["r"] == 4 and os.path.getsize(path) > 0


def test_base_weights_load_into_the_frozen_base(lora_run, tmp_path):
    c, cfg, before, after, abstract, shardings, _, _ = lora_run
    full_cfg = build.dit_config(demo.get_config().copy_and_resolve_references()) if False else None
    del full_cfg
    base = build.create(dataclasses_replace(cfg))
    _, p, b = ts.split(base)
    dit.save_folder(str(tmp_path / "base"), p, b)
    params, buffers = dit.load_into_state(str(tmp_path / "base"), abstract, shardings)
    state = ts.with_weights(before, params, buffers, shardings)
    k = ("net", "blocks", "ca", "attn", "to_v", "kernel")
    np.testing.assert_array_equal(np.asarray(tree.flat(state["buffers"])[k], np.float32),
                                  np.asarray(jnp.asarray(tree.flat(p)[k]).astype(jnp.bfloat16), np.float32))
    np.testing.assert_array_equal(np.asarray(tree.flat(state["params"])[("net", "blocks", "ca", "attn", "to_v",
                                                                        "lora_b")]), 0)


def dataclasses_replace(cfg):
    import dataclasses

    return dataclasses.replace(cfg, lora_rank=0, lora_alpha=0.0, lora_targets=())
