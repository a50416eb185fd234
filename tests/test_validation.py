"""Validation at each save scores the generated held-out views (cosmos_jax/validation.py + quality.py): cross-view
consistency from the clip's rig calibration and fidelity to the real views, in metrics.jsonl and the plot."""

import json
import os

import jax
import numpy as np

from configs import demo
from cosmos_jax import train
from cosmos_jax.data import synthetic


def test_saves_score_the_generated_views(tmp_path, monkeypatch):
    data = str(tmp_path / "syn")
    synthetic.generate(data, clips=2, frames=12, embed_dim=8, scale=1.0)
    c = demo.get_config()
    c.data.dataset_dir = data
    c.model.update(dict(crossattn_emb_channels=8, num_blocks=1, model_channels=32))
    c.data.num_workers, c.batch_size, c.max_iter, c.log_every = 1, 1, 1, 1
    c.samples.num_steps, c.samples.samples_at_start = 1, True
    c.mesh = (("data", 1), ("fsdp", 1), ("context", 1))
    monkeypatch.setenv("OUTPUT_ROOT", str(tmp_path / "out"))
    out = train.train(c, progress=False, devices=jax.devices()[:1])
    jdir = out["job_dir"]
    rows = [json.loads(line) for line in open(os.path.join(jdir, "metrics.jsonl"))]
    ref = [r for r in rows if r["kind"] == "val_reference"]
    val = [r for r in rows if r["kind"] == "val"]
    assert len(ref) == 1 and [r["step"] for r in val] == [0, 1]  # step 0 scored too (samples_at_start)
    # The held-out clip's real views agree with its calibration far better than copies of the front view.
    r = ref[0]
    assert r["real_matches"] > 0 and r["real_sampson_median_px"] < r["baseline_front_copy_sampson_median_px"]
    assert 0 < r["baseline_front_copy_psnr_db"] < 30 and r["baseline_front_copy_ssim"] < 1
    # The real views through the (haar) tokenizer: far closer to the real ones than the front copy, not equal.
    assert r["baseline_front_copy_psnr_db"] + 3 < r["real_tokenized_psnr_db"] < 60
    assert r["baseline_front_copy_ssim"] < r["real_tokenized_ssim"] < 1
    v = val[1]
    assert "xview_matches" in val[0] and np.isfinite(val[0]["psnr_db"])
    assert {"xview_sampson_median_px", "xview_inlier_fraction", "xview_matches", "psnr_db", "ssim"} <= set(v)
    assert np.isfinite(v["psnr_db"]) and -1 <= v["ssim"] <= 1
    assert out["quality_plot"] and os.path.getsize(out["quality_plot"]) > 0
