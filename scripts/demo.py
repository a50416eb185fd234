"""`make demo`: synthetic camera-rig data -> post-train the tiny Single2MultiView model -> checkpoints, `.pt`
exports, validation loss, generated views and a loss plot. A fresh job each run; the dataset is made once."""

from __future__ import annotations

import datetime
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import demo  # noqa: E402
from cosmos_jax import train  # noqa: E402
from cosmos_jax.data import synthetic  # noqa: E402

flags.DEFINE_string("data", "datasets/synthetic", "where the synthetic dataset lives (made if missing)")
flags.DEFINE_integer("steps", 800, "training steps")


def main(argv):
    del argv
    t0 = time.time()
    config = demo.get_config()
    data = flags.FLAGS.data
    if not os.path.isdir(os.path.join(data, "videos")):
        print(f"[demo] rendering the synthetic camera rig into {data} ...", flush=True)
        synthetic.generate(data, clips=4, seed=0, embed_dim=config.model.crossattn_emb_channels)
    config.data.dataset_dir = data
    config.max_iter = flags.FLAGS.steps
    config.checkpoint.save_iter = max(1, flags.FLAGS.steps // 2)
    config.job.name = "demo_" + datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    t_data = time.time() - t0
    summary = train.train(config, progress=True)
    job = summary["job_dir"]
    rows = train.metrics_lib.read(os.path.join(job, "metrics.jsonl"))
    val = [r for r in rows if r["kind"] == "val"]
    print(f"\n[demo] done in {time.time() - t0:.0f} s (data {t_data:.0f} s)")
    print(f"[demo] job directory     {job}")
    print(f"[demo] validation loss   {val[0]['val_loss']:.4f} before -> {val[-1]['val_loss']:.4f} after "
          f"(EMA {val[-1]['val_loss_ema']:.4f}; EDM-weighted MSE on held-out windows, fixed sigma grid)")
    print(f"[demo] upstream .pt      {os.path.join(job, 'checkpoints')}/iter_*_{{reg,ema}}_model.pt")
    print(f"[demo] Orbax checkpoints {os.path.join(job, 'orbax')}")
    print(f"[demo] samples           {os.path.join(job, 'samples')}/iter_*_grid.mp4 and *_sheet.png")
    print(f"[demo] loss plot         {summary['loss_plot']}")
    print(f"[demo] metrics           {os.path.join(job, 'metrics.jsonl')}, tensorboard --logdir {job}/tensorboard")
    return 0


if __name__ == "__main__":
    app.run(main)
