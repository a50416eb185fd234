"""The latent cache: encoded windows equal the video path's latents, same sampling semantics, settings checked,
training reads it."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from cosmos_jax.data import dataset, encode_latents, latent_cache, pipeline
from cosmos_jax.weights import tokenizer as tok
from tests.data import fixtures as fx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = fx.build(str(tmp_path_factory.mktemp("ds")), clips=(12, 10))
    out = str(tmp_path_factory.mktemp("cache"))
    c = fx.config(root)
    summary = encode_latents.encode(c, out, window_stride=1, dtype="float32", overwrite=True, progress=False)
    return c, root, out, summary


def test_cache_latents_equal_the_video_path(cache):
    c, root, out, summary = cache
    spec = dataset.DataSpec.from_config(c)
    video_src = dataset.MultiviewWindows(spec)
    t = tok.from_config(c)
    src = latent_cache.LatentCacheSource(out, spec, t.norm)
    assert len(src) == len(video_src) == summary["windows"] == 4 + 2 and summary["clips"] == 2
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    a, b = src.sample(3, rng_a), video_src.sample(3, rng_b)
    assert a["view_choice"].tolist() == b["view_choice"].tolist() and a["view_choice"][0] == 0
    want = np.asarray(t.encode(jnp.asarray(b["video"])[None]))[0]
    np.testing.assert_allclose(a["latents"], want, rtol=1e-5, atol=1e-5)
    assert set(a) == set(b) - {"video"} | {"latents"}
    for k in ("text", "text_mask", "view_idx", "view_choice", "fps", "frame_repeat", "window", "skipped"):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        assert a[k].dtype == b[k].dtype, k


def test_stride_and_pipeline(cache, tmp_path):
    c, root, out, _ = cache
    s = encode_latents.encode(c, str(tmp_path / "c2"), window_stride=2, progress=False)
    assert s["windows"] == 2 + 1  # starts 0, 2 of clip0 (4 windows) and 0 of clip1 (2 windows)
    spec = dataset.DataSpec.from_config(c)
    src = latent_cache.LatentCacheSource(str(tmp_path / "c2"), spec, tok.from_config(c).norm)
    batch = next(pipeline.make_iterator(src, seed=0, global_batch=2))
    assert batch["latents"].shape == (2, 3, 2, 2, 4, 16) and "video" not in batch
    with pytest.raises(FileExistsError, match="--overwrite"):
        encode_latents.encode(c, str(tmp_path / "c2"), progress=False)


def test_settings_mismatch_and_missing_cache_are_explained(cache, tmp_path):
    c, root, out, _ = cache
    spec = dataset.DataSpec.from_config(fx.config(root, load_mv_emb=True))
    with pytest.raises(ValueError, match="load_mv_emb"):
        latent_cache.LatentCacheSource(out, spec, tok.from_config(c).norm)
    with pytest.raises(FileNotFoundError, match="encode_latents"):
        latent_cache.LatentCacheSource(str(tmp_path), spec, tok.from_config(c).norm)
    index = json.load(open(os.path.join(out, "index.json")))
    assert index["format"] == latent_cache.FORMAT and index["latent_shape"] == [2, 2, 4, 16]


def test_training_reads_the_cache(cache, tmp_path):
    c, root, out, _ = cache
    cmd = [sys.executable, "-m", "cosmos_jax.train", "--config=configs/demo.py", "--noprogress",
           f"--config.data.dataset_dir={root}", f"--config.data.latent_cache={out}",
           "--config.model.crossattn_emb_channels=8", "--config.data.video_size=(16, 32)", "--config.max_iter=2",
           "--config.checkpoint.save_iter=2", "--config.log_every=1", "--config.batch_size=1",
           "--config.model.num_blocks=1", "--config.model.model_channels=32", "--config.checkpoint.export_pt=False"]
    env = {**os.environ, "OUTPUT_ROOT": str(tmp_path), "XLA_FLAGS": ""}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(x) for x in open(tmp_path / "posttraining/demo/demo_single2multiview/metrics.jsonl")]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2] and all(np.isfinite(r["loss"]) for r in train)
    # no heldout/ folder: validation falls back to the dataset's own windows (decoded videos)
    assert [r["step"] for r in rows if r["kind"] == "val"] == [0, 2]
