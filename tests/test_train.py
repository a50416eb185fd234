"""End to end on CPU: train, checkpoints and exports, exact resume after kills, strict base weights."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from cosmos_jax import optim, sharding
from cosmos_jax import train_state as ts
from cosmos_jax.models import build
from cosmos_jax.weights import checkpoint, dit, keymap, tree
from tests.data import fixtures as fx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = fx.build(str(tmp_path_factory.mktemp("ds")), clips=(12, 10))
    fx.build(os.path.join(root, "heldout"), clips=(10,))
    return root


def args(data, *extra):
    return [sys.executable, "-m", "cosmos_jax.train", "--config=configs/demo.py", "--noprogress",
            f"--config.data.dataset_dir={data}", "--config.model.crossattn_emb_channels=8",
            "--config.data.video_size=(16, 32)", "--config.max_iter=6", "--config.checkpoint.save_iter=2",
            "--config.log_every=1", "--config.samples.num_steps=2", "--config.data.num_workers=1",
            "--config.batch_size=1", "--config.model.num_blocks=2", "--config.model.model_channels=64", *extra]


def run(data, out, *extra, fault=None, expect=0, sigint_ignored=False):
    """The CLI in a subprocess; `sigint_ignored`: started with SIGINT ignored, as a script's `cmd &` is."""
    env = {**os.environ, "OUTPUT_ROOT": str(out), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    if fault:
        env["COSMOS_JAX_FAULT"] = fault
    cmd = args(data, *extra)
    if sigint_ignored:  # through sh's `trap '' INT`: an ignored signal stays ignored across exec. (Not preexec_fn:
        # Python code run between fork and exec in this multi-threaded process (JAX's threads) can deadlock the
        # child, which hung a test run here)
        cmd = ["sh", "-c", "trap '' INT; exec \"$@\"", "sh", *cmd]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == expect, p.stdout[-2000:] + p.stderr[-4000:]
    return p


JOB = "posttraining/demo/demo_single2multiview"


def step_metrics(out):
    path = os.path.join(out, JOB, "metrics.jsonl")
    rows = [json.loads(line) for line in open(path)]
    per_step = {}
    for r in rows:
        if r["kind"] == "train":
            per_step[r["step"]] = (r["loss"], r["first_window"])
    return per_step


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    run(data, out)
    return out


def test_outputs_and_exports(uninterrupted):
    job = os.path.join(uninterrupted, "posttraining/demo/demo_single2multiview")
    cfg = json.load(open(os.path.join(job, "config.json")))
    assert cfg["max_iter"] == 6
    table = keymap.torch_table(dit.shapes(build.abstract(build.dit_config(_config(cfg)))), 2)
    exported = sorted(os.listdir(os.path.join(job, "checkpoints")))
    assert exported == [f"iter_{s:09d}_{k}_model.pt" for s in (4, 6) for k in ("ema", "reg")]  # max_to_keep 2
    for step in (4, 6):
        reg = torch.load(os.path.join(job, f"checkpoints/iter_{step:09d}_reg_model.pt"), weights_only=True)
        ema = torch.load(os.path.join(job, f"checkpoints/iter_{step:09d}_ema_model.pt"), weights_only=True)
        assert list(reg) == [k for k, _ in table] == list(ema)
        assert all(v.dtype == torch.bfloat16 for v in reg.values())
        assert all(v.dtype == torch.float32 for v in ema.values())
        assert all(tuple(reg[k].shape) == s for k, s in table)
    assert not torch.equal(reg["net.x_embedder.proj.1.weight"].float(), ema["net.x_embedder.proj.1.weight"])
    assert sorted(os.listdir(os.path.join(job, "orbax"))) == ["4", "6"]  # max_to_keep 2
    for name in ("iter_000000006_grid.mp4", "iter_000000006_sheet.png"):
        assert os.path.getsize(os.path.join(job, "samples", name)) > 0
    assert os.path.isfile(os.path.join(job, "loss.png")) and os.listdir(os.path.join(job, "tensorboard"))
    metrics = [json.loads(line) for line in open(os.path.join(job, "metrics.jsonl"))]
    val = [m for m in metrics if m["kind"] == "val"]
    assert [m["step"] for m in val] == [0, 2, 4, 6] and all(np.isfinite(m["val_loss"]) for m in val)
    train = [m for m in metrics if m["kind"] == "train"]
    assert [m["step"] for m in train] == [1, 2, 3, 4, 5, 6]
    assert all(k in train[0] for k in ("loss", "grad_norm", "lr", "skipped_samples", "nonfinite_grads",
                                       "step_time_s", "samples_per_s"))


def _config(cfg_json):
    from configs import demo

    c = demo.get_config()
    for k in ("crossattn_emb_channels", "num_blocks", "model_channels"):
        c.model[k] = cfg_json["model"][k]
    return c


def test_resume_after_kills_matches_uninterrupted(data, uninterrupted, tmp_path):
    want = step_metrics(uninterrupted)
    no_val0 = "--config.samples.val_at_start=False"  # validation does not touch the training's randomness
    run(data, tmp_path, no_val0, fault="kill_after_step:3", expect=137)  # last complete save: step 2
    run(data, tmp_path, no_val0, fault="kill_during_save:4", expect=137)  # killed while step 4 is being written
    run(data, tmp_path, no_val0)
    got = step_metrics(tmp_path)
    assert sorted(got) == sorted(want)
    for s in want:
        assert got[s] == want[s], (s, got[s], want[s])  # same loss bit for bit, same data window
    rows = [json.loads(line) for line in open(os.path.join(tmp_path, JOB, "metrics.jsonl"))]
    assert [r["step"] for r in rows if r["kind"] == "val"] == [2, 4, 6]  # no step-0 validation, no duplicate


def test_ctrl_c_stops_cleanly_with_plots(data, tmp_path):
    """SIGINT (Ctrl-C, `timeout -s INT`) after step 3: exit 130, the last complete checkpoint named, the curves of
    what ran plotted; a rerun resumes from that checkpoint. Also for a run started with SIGINT ignored (a script's
    `python -m cosmos_jax.train ... &`, then `kill -INT`)."""
    p = run(data, tmp_path, fault="ctrl_c_after_step:3", expect=130, sigint_ignored=True)
    assert "interrupted at step" in p.stderr and "last complete checkpoint is step 2" in p.stderr, p.stderr[-2000:]
    job = os.path.join(tmp_path, JOB)
    assert os.path.isfile(os.path.join(job, "loss.png"))
    assert not os.path.exists(os.path.join(job, "summary.json"))  # the run did not finish
    assert checkpoint.complete_steps(job) == [2]


@pytest.fixture(scope="module")
def layout():
    from configs import demo

    c = demo.get_config()
    cfg = build.dit_config(c)
    tx = optim.make(c)
    mesh = sharding.make_mesh(c.mesh, devices=__import__("jax").devices()[:1])
    graphdef, abstract, shardings = ts.layout(cfg, tx, mesh)
    return c, cfg, tx, mesh, abstract, shardings


def test_base_weights_start_reg_and_ema(layout, tmp_path):
    c, cfg, tx, mesh, abstract, shardings = layout
    _, params, buffers = ts.split(build.create(cfg, seed=7))
    dit.save_folder(str(tmp_path / "base"), params, buffers)
    state = ts.create(cfg, tx, mesh, shardings)
    p, b = dit.load_into_state(str(tmp_path / "base"), abstract, shardings)
    state = ts.with_weights(state, p, b, shardings)
    k = ("net", "x_embedder", "kernel")
    np.testing.assert_array_equal(tree.flat(state["params"])[k], tree.flat(params)[k])
    np.testing.assert_array_equal(tree.flat(state["ema"])[k], tree.flat(params)[k])


@pytest.mark.parametrize("edit,msg", [
    (lambda p: p["net"].pop("view_embeddings"), "missing key net/view_embeddings"),
    (lambda p: p["net"].__setitem__("extra_table", np.zeros(3, np.float32)), "unexpected key net/extra_table"),
    (lambda p: p["net"].__setitem__("view_embeddings", np.zeros((6, 6), np.float32)),
     r"shape mismatch net/view_embeddings: stored \(6, 6\), expected \(7, 6\)"),
])
def test_non_strict_base_weights_are_refused(layout, tmp_path, edit, msg):
    c, cfg, tx, mesh, abstract, shardings = layout
    _, params, buffers = ts.split(build.create(cfg))
    params = __import__("jax").device_get(params)
    edit(params)
    dit.save_folder(str(tmp_path / "bad"), params, buffers)
    with pytest.raises(dit.WeightsMismatchError, match=msg):
        dit.load_into_state(str(tmp_path / "bad"), abstract, shardings)


def test_a_job_that_never_saved_is_named_as_such(layout, tmp_path):
    c, cfg, tx, mesh, abstract, shardings = layout
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"job.*no saved checkpoint \(no orbax/ folder"):
        dit.load_into_state(str(tmp_path / "job"), abstract, shardings)


def test_missing_base_weights_say_how_to_make_them(data, tmp_path):
    p = run(data, tmp_path, f"--config.checkpoint.load_path={tmp_path}/nowhere", expect=1)
    assert "converters.dit_to_orbax" in p.stderr and "nowhere" in p.stderr
