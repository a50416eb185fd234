"""The real path of a user's job: base weights then the donated jitted step (full and LoRA, fp32 and bf16
sources), resume, reruns with changed configs, a job already done, full disks, and config mistakes."""

import json
import os
import re
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import demo
from cosmos_jax import config_check, job, sharding, train
from cosmos_jax import train_state as ts
from cosmos_jax.models import build
from cosmos_jax.weights import checkpoint, dit, tree
from tests.data import fixtures as fx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LORA = dict(rank=4, alpha=8.0, targets=("to_q", "to_v", "layer1"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = fx.build(str(tmp_path_factory.mktemp("ds")), clips=(12, 10))
    fx.build(os.path.join(root, "heldout"), clips=(10,))
    return root


def config(data, lora=None, **top):
    c = demo.get_config()
    c.data.dataset_dir = data
    c.data.video_size = (16, 32)
    c.data.num_workers = 1
    c.model.update(dict(crossattn_emb_channels=8, num_blocks=2, model_channels=64))
    c.batch_size, c.log_every, c.max_iter = 1, 1, 2
    c.checkpoint.save_iter = 2
    c.samples.num_steps = 2
    c.mesh = (("data", 1), ("fsdp", 1), ("context", 1))
    if lora:
        c.lora.update(lora)
    for k, v in top.items():
        node, *rest = k.split("__")
        if rest:
            c[node][rest[0]] = v
        else:
            c[k] = v
    return c


def base_weights(c, path, dtype):
    """Converted base weights of the config's network (another seed), stored in `dtype`. Zero-initialised tensors
    (final layer, AdaLN gates) get small values, as in a trained network: else the blocks get no gradient."""
    _, params, buffers = ts.split(build.create(build.dit_config(config_without_lora(c)), seed=11))
    rng = np.random.default_rng(5)

    def cast(t):
        return jax.tree.map(lambda a: (np.asarray(a) if np.any(np.asarray(a)) else
                                       0.02 * rng.standard_normal(a.shape)).astype(dtype), t)
    params, buffers = cast(params), cast(buffers)
    dit.save_folder(path, params, buffers)
    return {p: np.asarray(a, np.float32) for p, a in tree.flat(params).items()}


def config_without_lora(c):
    c = c.copy_and_resolve_references()
    c.lora.rank = 0
    return c


def run(c, monkeypatch, out):
    monkeypatch.setenv("OUTPUT_ROOT", str(out))
    return train.train(c, progress=False, devices=jax.devices()[:1])


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_donated_steps_after_base_weights(mode, tmp_path):
    """The jitted, donated step runs on states made from fp32 and bf16 base weights (one compile per mode)."""
    from cosmos_jax import optim
    from cosmos_jax import step as step_lib
    from cosmos_jax.weights import tokenizer as tok
    from cosmos_jax.weights.dit import fresh_state

    c = demo.get_config()
    c.model.update(dict(model_channels=32, num_blocks=1, num_heads=2, crossattn_emb_channels=8, adaln_lora_dim=8))
    c.data.video_size = (16, 16)
    if mode == "lora":
        c.lora.update(LORA)
    cfg, tx = build.dit_config(c), optim.make(c)
    mesh = sharding.one_device_mesh()
    graphdef, abstract, sh = ts.layout(cfg, tx, mesh)
    batch_sh = sharding.batch_sharding(mesh, leading_axes=1)
    step = step_lib.jit_train_step(sh, batch_sh, graphdef=graphdef, tx_parts=optim.parts(c),
                                   cfg=step_lib.StepConfig.from_config(c), tokenizer=tok.from_config(c))
    rng = np.random.default_rng(0)
    host = {"video": rng.integers(0, 255, (1, 1, 3, 9, 16, 16, 3)).astype(np.uint8),
            "text": rng.standard_normal((1, 1, 3, 512, 8)).astype(np.float32),
            "view_idx": np.array([[[0, 1, 2]]], np.int32), "fps": np.full((1, 1), 10.0, np.float32),
            "frame_repeat": np.zeros((1, 1, 3), np.float32)}
    k = ("net", "blocks", "fa", "attn", "to_q", "kernel")
    for dtype in (np.float32, ml_dtypes.bfloat16):
        path = str(tmp_path / f"base_{np.dtype(dtype).name}")
        base = base_weights(c, path, dtype)
        c.checkpoint.load_path = path
        with sharding.activate(mesh):
            state = fresh_state(c, cfg, tx, mesh, abstract, sh)
            loaded = np.asarray(tree.flat(state["buffers" if mode == "lora" else "params"])[k], np.float32)
            np.testing.assert_array_equal(loaded, base[k].astype(dtype).astype(np.float32))
            for i in range(2):  # donated: fails with "donate the same buffer twice" if params and EMA alias
                state, m = step(state, sharding.put_batch(host, batch_sh, 1), jax.random.key(i))
        assert np.isfinite(float(m["loss"])) and float(m["grad_norm"]) > 0
        assert int(state["step"]) == 2


def test_weights_and_ema_do_not_share_buffers(data):
    """The cause of "Attempt to donate the same buffer twice": astype(float32) of fp32 params is the same array."""
    from cosmos_jax import optim

    c = config(data)
    cfg, tx = build.dit_config(c), optim.make(c)
    mesh = sharding.make_mesh(c.mesh, devices=jax.devices()[:1])
    _, _, sh = ts.layout(cfg, tx, mesh)
    state = ts.create(cfg, tx, mesh, sh)
    _, params, buffers = ts.split(build.create(cfg, seed=3))
    state = ts.with_weights(state, params, buffers, sh)
    ptr = lambda t: {a.unsafe_buffer_pointer() for a in jax.tree.leaves(t)}  # noqa: E731
    assert not ptr(state["params"]) & ptr(state["ema"])


@pytest.fixture(scope="module")
def lora_job(data, tmp_path_factory):
    """A LoRA job from bf16 base weights, 2 steps with .pt exports, then resumed to step 3 with harmless changes."""
    root = tmp_path_factory.mktemp("lora_job")
    c = config(data, LORA)
    c.data.val_dataset_dir = str(root / "no_heldout")  # validation off: one compile fewer
    base_weights(c, str(root / "base"), ml_dtypes.bfloat16)
    c.checkpoint.load_path = str(root / "base")
    mp = pytest.MonkeyPatch()
    first = run(c, mp, root / "out")
    c.max_iter, c.log_every, c.data.num_workers = 3, 3, 2
    second = run(c, mp, root / "out")
    mp.undo()
    return c, root, first, second


def test_lora_job_resumes_without_storing_the_base(lora_job):
    c, root, first, second = lora_job
    assert first["final"]["step"] == 2 and second["final"]["step"] == 3 and np.isfinite(second["final"]["loss"])
    jdir = second["job_dir"]
    for step in (2, 3):  # the frozen base is not in the checkpoints
        md = ocp.PyTreeCheckpointer().metadata(os.path.join(jdir, "orbax", str(step), "state"))
        assert sorted(dict(getattr(md, "item_metadata", md))) == ["ema", "opt_state", "params", "step"]
    _, restored = dit.restore_job_weights(jdir)  # generate and orbax_to_pt re-read it from load_path
    got = restored["buffers"]["net"]["blocks"]["fa"]["attn"]["to_q"]["kernel"]
    want = base_weights(c, str(root / "again"), ml_dtypes.bfloat16)[("net", "blocks", "fa", "attn", "to_q", "kernel")]
    np.testing.assert_array_equal(np.asarray(got, np.float32), want.astype(ml_dtypes.bfloat16).astype(np.float32))
    rows = [json.loads(line) for line in open(os.path.join(jdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]
    # Harmless changes were accepted: config.json rewritten, the earlier one kept.
    assert json.load(open(os.path.join(jdir, "config.json")))["max_iter"] == 3
    assert json.load(open(os.path.join(jdir, "config.step000000002.json")))["max_iter"] == 2


def test_rerun_refuses_structural_changes_and_keeps_the_job(lora_job, monkeypatch):
    c, root, _, second = lora_job
    jdir = second["job_dir"]
    before = {n: os.path.getmtime(os.path.join(jdir, n)) for n in os.listdir(jdir)}
    c2 = c.copy_and_resolve_references()
    c2.model.num_blocks, c2.lora.rank = 3, 8
    with pytest.raises(job.RerunConfigError) as e:
        run(c2, monkeypatch, root / "out")
    msg = str(e.value)
    assert "model.num_blocks: saved 2, now 3" in msg and "lora.rank: saved 4, now 8" in msg
    assert "--config.job.name" in msg
    assert {n: os.path.getmtime(os.path.join(jdir, n)) for n in os.listdir(jdir)} == before  # nothing written
    # Already at max_iter: says so and touches nothing (summary.json kept).
    assert run(c, monkeypatch, root / "out")["final"]["step"] == 3
    assert {n: os.path.getmtime(os.path.join(jdir, n)) for n in os.listdir(jdir)} == before


def test_check_rerun_classifies_changes(caplog):
    old = {"model": {"num_blocks": 2, "dtype": "float32"}, "max_iter": 4, "optim": {"lr": 1e-3},
           "lora": {"rank": 4}, "checkpoint": {"load_path": "/a"}, "seed": 0}
    new = json.loads(json.dumps(old))
    new["model"]["dtype"], new["max_iter"], new["optim"]["lr"] = "bfloat16", 8, 2e-3
    with caplog.at_level("INFO", logger="cosmos_jax.job"):
        lines = job.check_rerun(old, new, "/job", 4)
    assert len(lines) == 3 and any("WARNING" == r.levelname and "optim.lr" in r.message for r in caplog.records)
    new["checkpoint"]["load_path"] = "/b"  # a LoRA job's frozen base
    with pytest.raises(job.RerunConfigError, match="checkpoint.load_path: saved \"/a\", now \"/b\""):
        job.check_rerun(old, new, "/job", 4)


def test_trim_metrics(tmp_path):
    rows = [{"step": s, "kind": "train"} for s in (1, 2, 3, 4, 3, 4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert job.trim_metrics(str(tmp_path), 2) == 4
    assert [json.loads(x)["step"] for x in open(tmp_path / "metrics.jsonl")] == [1, 2]


def test_full_disk_stops_at_once_and_leaves_the_last_checkpoint(data, tmp_path, monkeypatch):
    c = config(data, max_iter=4)
    c.data.val_dataset_dir = str(tmp_path / "no_heldout")
    jdir = run(c, monkeypatch, tmp_path)["job_dir"]  # steps 2, 4 saved and exported
    monkeypatch.setattr(checkpoint, "free_bytes", lambda folder: 1000)
    c.max_iter = 8
    with pytest.raises(checkpoint.SaveError) as e:
        run(c, monkeypatch, tmp_path)
    msg = str(e.value)
    assert "No space left on device" in msg and os.path.join(jdir, "orbax") in msg and "step 4" in msg
    assert "needs" in msg and "GB" in msg
    assert checkpoint.complete_steps(jdir) == [2, 4]  # the run stopped at its first save (step 6)
    assert not [n for n in os.listdir(os.path.join(jdir, "orbax")) if not n.isdigit() and "tmp" in n]
    assert not [n for n in os.listdir(os.path.join(jdir, "checkpoints")) if ".tmp" in n]
    assert dit.restore_job_weights(jdir)[0] == 4  # still loadable
    # Space for the checkpoint but not for the export: stops at the export, nothing partial, step 6 complete.
    monkeypatch.setattr(checkpoint, "free_bytes", lambda folder: 10**12 if folder.endswith("orbax") else 1000)
    with pytest.raises(checkpoint.SaveError, match=r"the \.pt export of step 6"):
        run(c, monkeypatch, tmp_path)
    assert not [n for n in os.listdir(os.path.join(jdir, "checkpoints")) if ".tmp" in n]
    assert checkpoint.complete_steps(jdir) == [4, 6] and 6 not in checkpoint.exported_steps(
        os.path.join(jdir, "checkpoints"))
    # The rerun writes the missing export first, then trains on.
    monkeypatch.undo()
    monkeypatch.setenv("OUTPUT_ROOT", str(tmp_path))
    c.max_iter = 6
    run(c, monkeypatch, tmp_path)
    assert 6 in checkpoint.exported_steps(os.path.join(jdir, "checkpoints"))


@pytest.mark.parametrize("override,msg", [
    ("--config.bach_size=3", "unknown config key 'bach_size'; did you mean 'batch_size'?"),
    ("--config.grad_accum=0", "config.grad_accum=0: expected an integer >= 1"),
    ("--config.mesh=data=2", "config.mesh="),
    ("--config.checkpoint.load_path=/nowhere/base", "checkpoint.load_path=/nowhere/base: no such path"),
    ("--config.data.dataset_dir=/nowhere/ds", "/nowhere/ds/videos/pinhole_front: no such folder"),
])
def test_config_mistakes_are_one_line_and_leave_no_job(data, tmp_path, override, msg):
    env = {**os.environ, "OUTPUT_ROOT": str(tmp_path), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    p = subprocess.run([sys.executable, "-m", "cosmos_jax.train", "--config=configs/demo.py", "--noprogress",
                        f"--config.data.dataset_dir={data}", override], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 1, p.stderr[-3000:]
    assert msg in p.stderr and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert not os.listdir(tmp_path)


def test_config_check_values(data):
    c = config(data)
    config_check.check(c, 1)
    for key, value, msg in [("data.num_frames", 10, "1 + a multiple of 8"), ("lora.rank", -1, "lora.rank=-1"),
                            ("top.batch_size", -4, "config.batch_size=-4"),
                            ("top.remat", "attention", "config.remat='attention': expected one of"),
                            ("data.video_size", (16, 30), "multiple of 16"), ("model.num_heads", 5, "divisible")]:
        bad = c.copy_and_resolve_references()
        node, name = key.split(".")
        if node == "top":
            bad[name] = value
        else:
            bad[node][name] = value
        with pytest.raises(config_check.ConfigError, match=re.escape(msg)):
            config_check.check(bad, 1)
    bad = c.copy_and_resolve_references()
    bad.mesh = (("data", 1), ("fsdp", 1), ("context", 4))
    with pytest.raises(config_check.ConfigError, match="needs 4 devices, 1 present"):
        config_check.check(bad, 1)
    bad = c.copy_and_resolve_references()
    bad.batch_size, bad.mesh = 3, (("data", 1), ("fsdp", 2), ("context", 1))
    with pytest.raises(config_check.ConfigError, match=r"config.batch_size=3: must be a multiple of the "
                                                       r"data-parallel size data\*fsdp=2"):
        config_check.check(bad, 2)


@pytest.mark.parametrize("target", ["full", "lora"])
def test_load_path_may_be_a_full_fine_tune_job(tmp_path, target):
    """A job directory as checkpoint.load_path: its regular weights land where this state keeps them (a LoRA state
    keeps the base kernels in `buffers`), strictly checked."""
    from cosmos_jax import optim
    from cosmos_jax.weights.dit import fresh_state

    c = demo.get_config()
    c.model.update(dict(model_channels=32, num_blocks=1, num_heads=2, crossattn_emb_channels=8, adaln_lora_dim=8))
    cfg, tx = build.dit_config(c), optim.make(c)
    mesh = sharding.one_device_mesh()
    _, _, sh = ts.layout(cfg, tx, mesh, seed=4)
    src = ts.create(cfg, tx, mesh, sh, seed=4)
    jdir = tmp_path / "job"
    ckpt = checkpoint.Manager(str(jdir), 1, async_save=False)
    ckpt.save(1, src, {"next_index": 0}, {"step": 1})
    ckpt.close()
    (jdir / "config.json").write_text(c.to_json_best_effort())
    t = c.copy_and_resolve_references()
    if target == "lora":
        t.lora.update(LORA)
    t.checkpoint.load_path = str(jdir)
    tcfg, ttx = build.dit_config(t), optim.make(t)
    _, abstract, tsh = ts.layout(tcfg, ttx, mesh, seed=0)
    state = fresh_state(t, tcfg, ttx, mesh, abstract, tsh)
    k = ("net", "blocks", "fa", "attn", "to_q", "kernel")
    got = tree.flat(state["buffers" if target == "lora" else "params"])[k]
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(tree.flat(src["params"])[k], np.float32))
    bad = t.copy_and_resolve_references()
    bad.model.num_blocks = 2
    bcfg, btx = build.dit_config(bad), optim.make(bad)
    _, babs, bsh = ts.layout(bcfg, btx, mesh)
    with pytest.raises(dit.WeightsMismatchError, match="shape mismatch net/blocks/fa/attn/to_q/kernel"):
        fresh_state(bad, bcfg, btx, mesh, babs, bsh)
