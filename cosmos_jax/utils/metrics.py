"""Metrics to TensorBoard (tensorboardX, no TensorFlow) and `metrics.jsonl`, from process 0 only; the loss plot."""

from __future__ import annotations

import json
import os

import jax
import numpy as np


class MetricWriter:
    def __init__(self, job_dir: str, purge_step: int | None = None):
        """`purge_step`: on resume, TensorBoard events at or after it (written after the last checkpoint) are
        discarded, as `job.trim_metrics` drops them from metrics.jsonl."""
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(job_dir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(job_dir, "tensorboard"), purge_step=purge_step)

    def write(self, step: int, metrics: dict, prefix: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: float(np.asarray(v)) for k, v in metrics.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "kind": prefix, **clean}) + "\n")
        for k, v in clean.items():
            self._tb.add_scalar(f"{prefix}/{k}", v, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_losses(metrics_path: str, out_png: str) -> str | None:
    """Training loss (and validation loss at saves) against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if r["kind"] == "train" and "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if r["kind"] == "val" and "val_loss" in r]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    handles = ax.plot(*zip(*train, strict=True), label="train loss (Kendall EDM)", lw=1)
    if val:
        ax2 = ax.twinx()
        handles += ax2.plot(*zip(*val, strict=True), "o-", color="tab:red", label="val EDM MSE (fixed sigma grid)")
        ax2.set_ylabel("validation", color="tab:red")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_title("cosmos_jax post-training", fontsize=10)
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def plot_quality(metrics_path: str, out_png: str) -> str | None:
    """The generated held-out views' scores at each save (cross-view Sampson distance, PSNR, SSIM), with the real
    views' (ceiling) and the front-copy baseline's as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read(metrics_path)
    val = [r for r in rows if r["kind"] == "val" and "xview_sampson_median_px" in r]
    if not val:
        return None
    ref = next((r for r in rows if r["kind"] == "val_reference"), {})
    panels = [("xview_sampson_median_px", "cross-view Sampson median (px)", "sampson_median_px"),
              ("xview_inlier_fraction", "cross-view inlier fraction", "inlier_fraction"),
              ("psnr_db", "PSNR vs real views (dB)", "psnr_db"), ("ssim", "SSIM vs real views", "ssim")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), dpi=100)
    for ax, (key, title, ref_key) in zip(axes, panels, strict=True):
        pts = [(r["step"], r[key]) for r in val if key in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", label="generated")
        for name, style in (("real", "g--"), ("baseline_front_copy", "r:"), ("real_tokenized", "m-.")):
            v = ref.get(f"{name}_{ref_key}")
            if v is not None and np.isfinite(v):
                ax.axhline(v, color=style[0], ls=style[1:], label=name.replace("_", " "))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
