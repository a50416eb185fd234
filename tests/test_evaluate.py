"""python -m cosmos_jax.evaluate: generated views of held-out clips scored beside the real views and the baseline."""

import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np

from configs import demo
from cosmos_jax import evaluate, train
from cosmos_jax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_evaluate_a_job(tmp_path, monkeypatch):
    data = str(tmp_path / "syn")
    synthetic.generate(data, clips=2, frames=12, embed_dim=8, scale=1.0, heldout=2)
    c = demo.get_config()
    c.data.dataset_dir = data
    c.data.val_dataset_dir = str(tmp_path / "none")  # no validation during training: one compile fewer
    c.model.update(dict(crossattn_emb_channels=8, num_blocks=1, model_channels=32))
    c.data.num_workers, c.batch_size, c.max_iter, c.log_every = 1, 1, 1, 1
    c.checkpoint.export_pt = False
    c.mesh = (("data", 1), ("fsdp", 1), ("context", 1))
    monkeypatch.setenv("OUTPUT_ROOT", str(tmp_path / "out"))
    jdir = train.train(c, progress=False, devices=jax.devices()[:1])["job_dir"]
    res = evaluate.evaluate(jdir, data, clips=3, num_steps=1, frames=3)
    assert res["out"] == os.path.join(jdir, "evaluate", "step_1") and res["dataset"] == os.path.join(data, "heldout")
    held = ["synth_s0_heldout_0000.mp4", "synth_s0_heldout_0001.mp4"]
    assert [c["clip"] for c in res["clips"]] == held  # the held-out clips (3 asked, 2 there)
    m = res["means"]
    assert m["real"]["sampson_median_px"] < m["baseline_front_copy"]["sampson_median_px"]
    assert m["baseline_front_copy"]["psnr_db"] + 3 < m["real_tokenized"]["psnr_db"] < 60
    assert np.isfinite(m["generated"]["psnr_db"]) and "ssim" in m["generated"] and "psnr_db" not in m["real"]
    saved = json.load(open(os.path.join(res["out"], "metrics.json")))
    assert saved["means"]["baseline_front_copy"]["psnr_db"] == m["baseline_front_copy"]["psnr_db"]
    rows = list(csv.DictReader(open(os.path.join(res["out"], "metrics.csv"))))
    assert [(r["clip"], r["kind"]) for r in rows] == [(cl, k) for cl in (*held, "mean") for k in evaluate.KINDS]
    assert os.path.getsize(res["clips"][0]["sheet"]) > 0


def test_evaluate_cli_names_a_missing_job(tmp_path):
    p = subprocess.run([sys.executable, "-m", "cosmos_jax.evaluate", f"--checkpoint={tmp_path}/nojob",
                        f"--dataset={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert p.returncode == 1 and "nojob" in p.stderr and "Traceback" not in p.stderr
