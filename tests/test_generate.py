"""View-extension inference on a tiny random network: outputs and grid, the pinned condition, guidance, seeds,
and the same result from a job directory and from its exported `.pt`."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from cosmos_jax import inference, optim, sharding
from cosmos_jax import train_state as ts
from cosmos_jax.data import video as video_io
from cosmos_jax.diffusion import conditioning, sampler
from cosmos_jax.models import build
from cosmos_jax.rig import Rig
from cosmos_jax.weights import checkpoint, dit, export
from cosmos_jax.weights import tokenizer as tok
from tests.data import fixtures as fx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A job directory holding a random (non-zero everywhere) tiny network, as training would leave it."""
    root = tmp_path_factory.mktemp("gen")
    c = demo.get_config()
    c.model.update(dict(model_channels=32, num_blocks=1, num_heads=2, crossattn_emb_channels=8, adaln_lora_dim=8))
    c.data.video_size = (16, 32)
    c.data.dataset_dir = str(root / "ds")
    cfg = build.dit_config(c)
    tx = optim.make(c)
    mesh = sharding.make_mesh(c.mesh, devices=jax.devices()[:1])
    _, _, shardings = ts.layout(cfg, tx, mesh)
    state = ts.create(cfg, tx, mesh, shardings)
    rng = np.random.default_rng(0)
    noisy = lambda t: jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape) * 0.3, a.dtype), t)  # noqa
    state = {**state, "params": noisy(state["params"]), "ema": noisy(state["ema"])}
    jdir = root / "job"
    os.makedirs(jdir)
    (jdir / "config.json").write_text(c.to_json_best_effort())
    m = checkpoint.Manager(str(jdir), 1, async_save=False)
    m.save(3, state, {}, {})
    m.close()
    export.export_pt(state, 1, str(jdir / "checkpoints"), 3)
    front = root / "front.mp4"
    fx.write_video(str(front), 12, h=16, w=32)
    return c, str(jdir), str(front)


def text(v=5, s=512, e=8, seed=0):
    return np.random.default_rng(seed).standard_normal((v, s, e)).astype(np.float32)


def run(loaded, front_path, guidance=7.0, seed=0, rig=None, steps=4):
    c = loaded.config
    rig = rig or Rig.training(c, 5)
    front = video_io.read_frames(front_path, range(9), tuple(c.data.video_size))
    return inference.view_extend(loaded, tok.from_config(c), front, text(len(rig.names)), rig, 10.0,
                                 jax.random.key(seed), steps, guidance)


def test_condition_region_is_the_encoded_condition(job):
    c, jdir, front_path = job
    loaded = dit.load(jdir)
    gen, gt = run(loaded, front_path)
    assert gen.shape == (5, 9, 16, 32, 3) and gen.dtype == np.uint8
    t = tok.from_config(c)
    np.testing.assert_array_equal(gen[0], np.asarray(t.decode(jnp.asarray(gt)))[0, 0])
    assert not np.array_equal(gen[1], gen[2])


def test_same_seed_same_video_and_pt_equals_job(job):
    c, jdir, front_path = job
    a, _ = run(dit.load(jdir), front_path, seed=1)
    b, _ = run(dit.load(jdir), front_path, seed=1)
    np.testing.assert_array_equal(a, b)
    other, _ = run(dit.load(jdir), front_path, seed=2)
    assert not np.array_equal(a, other)
    from_pt, _ = run(dit.load(os.path.join(jdir, "checkpoints/iter_000000003_ema_model.pt"),
                              config=dit.load(jdir).config), front_path, seed=1)
    np.testing.assert_array_equal(a, from_pt)
    reg, _ = run(dit.load(jdir, weights="reg"), front_path, seed=1)
    assert not np.array_equal(a, reg)


def test_guidance_zero_is_the_conditional_pass_alone(job):
    """Upstream's guidance F = F_c + g (F_c - F_u): g = 0 is the conditional network alone."""
    c, jdir, front_path = job
    loaded = dit.load(jdir)
    rig = Rig.training(c, 3)
    t = tok.from_config(c)
    front = video_io.read_frames(front_path, range(9), (16, 32))
    guided, gt = inference.view_extend(loaded, t, front, text(3), rig, 10.0, jax.random.key(5), 3, 0.0)
    from flax import nnx

    model = nnx.merge(loaded.graphdef, loaded.params, loaded.buffers)
    ind = conditioning.condition_indicator("first_cam", 3, gt.shape[2])[None]
    rows = jnp.broadcast_to(jnp.asarray(rig.rows)[None, :, None], (1, 3, gt.shape[2]))

    def cond_only(x_in, c_noise):
        f = model.net(x_in, c_noise, jnp.asarray(text(3))[None], ind, rows, jnp.full((1,), 10.0), jnp.zeros((1, 3)))
        return f, f

    lat = sampler.sample(cond_only, jax.random.key(5), jnp.asarray(gt), ind, guidance=0.0, num_steps=3)
    np.testing.assert_allclose(np.asarray(t.decode(lat))[0].astype(int), guided.astype(int), atol=1)
    changed, _ = inference.view_extend(loaded, t, front, text(3), rig, 10.0, jax.random.key(5), 3, 7.0)
    assert not np.array_equal(changed, guided)


def test_upstream_rig_and_grid():
    rig = Rig.upstream(6)
    assert rig.rows == (0, 1, 2, 3, 4, 5) and rig.repeat == (0, 0, 0, 0, 10, 10)
    assert rig.grid_order() == [1, 0, 2, 4, 3, 5]
    with pytest.raises(ValueError, match="1..6 views"):
        Rig.upstream(7)


def test_cli_writes_views_grid_sheet_and_settings(job, tmp_path):
    c, jdir, front_path = job
    np.random.seed(0)
    pk = []
    for i in range(6):
        p = tmp_path / f"p{i}.pkl"
        fx.dump(str(p), [np.random.standard_normal((7, 8)).astype(np.float32)])
        pk.append(str(p))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cosmos_jax.generate", f"--checkpoint={jdir}", f"--view_condition_video={front_path}",
           f"--out={out}", "--num_steps=2", "--prompt_pickles=" + ",".join(pk)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    names = ["front", "front_left", "front_right", "back", "back_left", "back_right"]
    assert sorted(os.listdir(out)) == sorted([f"{n}.mp4" for n in names] + ["grid.mp4", "sheet.png",
                                                                             "prompts.txt", "settings.json"])
    grid = video_io.probe(str(out / "grid.mp4"))
    assert (grid.width, grid.height, grid.num_frames) == (3 * 32, 2 * (16 + 12), 9)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["view_rows"] == [0, 1, 2, 3, 4, 5] and settings["fps_to_network"] == 10.0
    bad = subprocess.run(cmd[:-1] + ["--prompt_pickles=" + ",".join(pk[:2])], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 1 and "2 files for 6 views" in bad.stderr


def test_tokens_split_over_two_devices_give_the_same_video(job):
    """--context 2: 5 views of 4 tokens split 10 + 10, so each shard straddles view boundaries."""
    from cosmos_jax import sharding

    c, jdir, front_path = job
    want, _ = run(dit.load(jdir), front_path, seed=3)
    loaded, mesh = inference.on_context_mesh(dit.load(jdir), 2)
    assert mesh.shape["context"] == 2
    with sharding.activate(mesh):
        got, _ = run(loaded, front_path, seed=3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # fp32 round-off may move a pixel by one level
    with pytest.raises(ValueError, match="--context=99"):
        inference.on_context_mesh(dit.load(jdir), 99)
