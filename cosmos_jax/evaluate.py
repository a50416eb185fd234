"""`python -m cosmos_jax.evaluate --checkpoint JOB --dataset DIR [--clips N] [--out DIR]`

Generates the other cameras of N clips of a dataset from their front camera (the training rig, the clips' own text
embeddings, the first window of each clip) and scores them (cosmos_jax/quality.py): cross-view consistency of the
generated views against the clip's rig calibration, PSNR/SSIM against the real views, and for reference the same
numbers for the real views (the ceiling), for "every view = the front view" (the trivial baseline) and for the real
views encoded and decoded by the tokenizer (`real_tokenized`: the ceiling for a generator in its latent space).

The dataset's held-out clips are used when it has them (`DIR/heldout`). Writes to --out (default
`JOB/evaluate/step_N`): metrics.json (per clip, per pair and view, and the means), metrics.csv (one row per clip and
kind), and per clip a sheet (generated above real) and the grid video.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from cosmos_jax import inference, quality, sharding
from cosmos_jax.data import dataset
from cosmos_jax.rig import Rig
from cosmos_jax.samples import write_comparison
from cosmos_jax.weights import dit
from cosmos_jax.weights import tokenizer as tok

KINDS = ("generated", "real", "baseline_front_copy", "real_tokenized")
COLUMNS = ("sampson_median_px", "inlier_fraction", "matches", "inliers", "psnr_db", "ssim")


def define_flags() -> None:
    flags.DEFINE_string("checkpoint", None, "job directory (or its orbax/ folder)", required=True)
    flags.DEFINE_string("dataset", None, "dataset folder (its heldout/ clips when present)", required=True)
    flags.DEFINE_integer("clips", 4, "clips to evaluate (the first N in name order)")
    flags.DEFINE_integer("n_views", 0, "views, the front included (0: the config's data.sample_n_views)")
    flags.DEFINE_integer("num_steps", 35, "sampler steps")
    flags.DEFINE_float("guidance", 7.0, "classifier-free guidance")
    flags.DEFINE_integer("frames", 6, "frames per clip scored for cross-view consistency")
    flags.DEFINE_integer("seed", 1, "random seed")
    flags.DEFINE_enum("weights", "ema", ["ema", "reg"], "which weights of the job")
    flags.DEFINE_string("out", None, "output folder (default JOB/evaluate/step_N)")


def clip_windows(source: dataset.MultiviewWindows, n: int) -> list[int]:
    """Index of the first window of each of the first n clips."""
    first: dict[str, int] = {}
    for i, (clip, _) in enumerate(source.windows):
        first.setdefault(clip, i)
    return [first[c] for c in sorted(first)[:n]]


def evaluate(checkpoint: str, dataset_dir: str, clips: int = 4, n_views: int = 0, num_steps: int = 35,
             guidance: float = 7.0, frames: int = 6, seed: int = 1, weights: str = "ema", out: str | None = None
             ) -> dict:
    t0 = time.time()
    loaded, mesh = inference.on_context_mesh(dit.load(checkpoint, weights), 1)
    config = loaded.config
    held = os.path.join(dataset_dir, "heldout")
    root = held if os.path.isdir(os.path.join(held, "videos")) else dataset_dir
    spec = dataset.DataSpec.from_config(config, dataset_dir=root)
    source = dataset.MultiviewWindows(spec)
    v = n_views or int(config.data.sample_n_views)
    rig = Rig.training(config, v)
    names = [spec.view_keys[i] for i in range(v)]
    tokenizer = tok.from_config(config)
    step = loaded.source.split(" step ")[-1].split(" ")[0] if " step " in loaded.source else "0"
    out = out or os.path.join(checkpoint.rstrip("/").removesuffix("/orbax"), "evaluate", f"step_{step}")
    os.makedirs(out, exist_ok=True)
    per_clip = []
    for k, w in enumerate(clip_windows(source, clips)):
        clip = source.windows[w][0]
        sample = source.load_window(w, np.arange(v))
        with sharding.activate(mesh):
            gen, _ = inference.view_extend(loaded, tokenizer, sample["video"][0], sample["text"], rig,
                                           float(sample["fps"]), jax.random.key(seed + k), num_steps, guidance)
            tokenized = sharding.to_host(tokenizer.roundtrip(jnp.asarray(sample["video"])[None]))[0]
        real = dict(zip(names, sample["video"], strict=True))
        rep = quality.report(dict(zip(names, gen, strict=True)), real, quality.load_rig(root, clip), frames,
                             dict(zip(names, tokenized, strict=True)))
        stem = os.path.splitext(clip)[0]
        _, sheet = write_comparison(out, stem, sample["video"], gen, names, float(sample["fps"]))
        per_clip.append({"clip": clip, "sheet": sheet, **rep})
    means = {kind: mean_summary([c[kind]["summary"] for c in per_clip]) for kind in KINDS}
    result = {"checkpoint": loaded.source, "dataset": root, "views": names, "num_steps": num_steps,
              "guidance": guidance, "frames": frames, "means": means, "clips": per_clip,
              "seconds": round(time.time() - t0, 1)}
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2, default=float)
    with open(os.path.join(out, "metrics.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("clip", "kind", *COLUMNS))
        for c in per_clip:
            for kind in KINDS:
                w.writerow((c["clip"], kind, *(c[kind]["summary"].get(k, "") for k in COLUMNS)))
        for kind in KINDS:
            w.writerow(("mean", kind, *(means[kind].get(k, "") for k in COLUMNS)))
    result["out"] = out
    return result


def mean_summary(summaries: list[dict]) -> dict:
    """Mean of each metric over clips (NaN-free values only; counts summed)."""
    out = {}
    for k in COLUMNS:
        vals = [s[k] for s in summaries if k in s and np.isfinite(s[k])]
        if vals:
            out[k] = float(np.sum(vals)) if k in ("matches", "inliers") else float(np.mean(vals))
    return out


def main(argv):
    del argv
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    f = flags.FLAGS
    try:
        result = evaluate(f.checkpoint, f.dataset, f.clips, f.n_views, f.num_steps, f.guidance, f.frames, f.seed,
                          f.weights, f.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"out": result["out"], "means": result["means"], "seconds": result["seconds"]}, indent=2))


if __name__ == "__main__":
    define_flags()
    app.run(main)
