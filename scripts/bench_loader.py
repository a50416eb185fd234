"""Loader throughput on this machine: decode + resize + embeddings through the grain pipeline.

`python scripts/bench_loader.py --shape seed|demo [--source native|resized] [--samples N] [--threads=2,8,16]`
builds a dataset of textured, moving H.264 videos (5 views, Waymo aspect ratios) once under --work, then times the
pipeline (batch 1) once per read-thread count. Writes <out_dir>/loader_<shape>_<source>_<date>.json: `threads`,
`samples_per_s` and `s_per_sample` of the fastest count, and `samples_per_s_by_threads` for every count.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import base, demo  # noqa: E402
from cosmos_jax.data import dataset, pipeline, video  # noqa: E402
from scripts.bench_common import write_result  # noqa: E402

flags.DEFINE_enum("shape", "seed", ["seed", "demo"], "seed: 3 views x 57 frames at 576x1024; demo: configs/demo.py")
flags.DEFINE_enum("source", "native", ["native", "resized", "cache"],
                  "native/resized: videos stored at Waymo or training size; cache: a latent cache of the resized set")
flags.DEFINE_integer("samples", 12, "samples to time after one warm-up batch")
flags.DEFINE_list("threads", ["2"], "grain read threads (data.num_workers); a comma list times each: 2,8,16")
flags.DEFINE_string("work", "/tmp/cosmos_jax_bench_loader", "where the benchmark dataset is built")
flags.DEFINE_string("out_dir", "bench/results", "where the JSON result is written")
F = flags.FLAGS

NATIVE = {"front": (1280, 1920), "side": (886, 1920)}


def textured_clip(n, h, w, seed):
    rng = np.random.default_rng(seed)
    base_tex = rng.integers(0, 255, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    tex = np.kron(base_tex, np.ones((8, 8, 1), np.uint8))
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for f in range(n):
        shift = (3 * f) % 8
        t = tex[shift:shift + h, shift:shift + w]
        grad = ((xx + 4 * f) % 256).astype(np.uint8)[..., None]
        frames.append(((t.astype(np.uint16) + grad) // 2).astype(np.uint8))
    return np.stack(frames)


def build(root, frames, sizes, embed_dim):
    import pickle

    for i, view in enumerate(base.VIEW_KEYS):
        h, w = sizes["side" if "side" in view else "front"]
        path = os.path.join(root, "videos", view, "clip0.mp4")
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            video.write_mp4(path, textured_clip(frames, h, w, i), fps=10, crf=23, gop=10)
        for d, obj in ((os.path.join(root, "t5_xxl", view, "clip0.pkl"), [np.ones((120, embed_dim), np.float32)]),
                       (os.path.join(root, "cache", f"prefix_{view}.pkl"), np.ones((20, embed_dim), np.float32))):
            os.makedirs(os.path.dirname(d), exist_ok=True)
            with open(d, "wb") as f:
                pickle.dump(obj, f)


def main(argv):
    del argv
    from configs import waymo

    config = waymo.get_config() if F.shape == "seed" else demo.get_config()
    h, w = config.data.video_size
    sizes = NATIVE if F.source == "native" else {"front": (h, w), "side": (h, w)}
    if F.shape == "seed":
        config.tokenizer.name = "haar"  # the weight-free tokenizer makes the cache here; same record sizes
    frames = config.data.num_frames + 7
    root = os.path.join(F.work, f"{F.shape}_{'resized' if F.source == 'cache' else F.source}")
    t0 = time.time()
    build(root, frames, sizes, config.model.crossattn_emb_channels)
    config.data.dataset_dir = root
    spec = dataset.DataSpec.from_config(config)
    if F.source == "cache":
        from cosmos_jax.data import encode_latents, latent_cache
        from cosmos_jax.weights import tokenizer as tok

        cache = os.path.join(F.work, f"{F.shape}_cache")
        if not os.path.isfile(os.path.join(cache, "index.json")):
            encode_latents.encode(config, cache, progress=False)
        source = latent_cache.LatentCacheSource(cache, spec, tok.from_config(config).norm)
    else:
        source = dataset.MultiviewWindows(spec)
    t_build = time.time() - t0
    threads = [int(n) for n in F.threads]
    by_threads, b = {}, None
    for n in threads:
        it = pipeline.make_iterator(source, seed=0, global_batch=1, num_threads=n, prefetch=n)
        next(it)  # warm-up: starts the threads and fills the buffer
        t = time.time()
        for _ in range(F.samples):
            b = next(it)
        by_threads[str(n)] = F.samples / (time.time() - t)
        it.close()
        print(f"threads {n}: {by_threads[str(n)]:.3f} samples/s")
    best = max(threads, key=lambda n: by_threads[str(n)])
    result = {
        "name": f"loader_{F.shape}_{F.source}", "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "command": " ".join(["python", "scripts/bench_loader.py"] + sys.argv[1:]),
        "sample_shape": list(b["latents" if F.source == "cache" else "video"].shape[1:]),
        "source_sizes": {k: list(v) for k, v in sizes.items()},
        "threads": best, "samples": F.samples, "samples_per_s": by_threads[str(best)],
        "s_per_sample": 1.0 / by_threads[str(best)], "dataset_build_s": t_build,
        "samples_per_s_by_threads": by_threads,
    }
    out = write_result(result, F.out_dir, f"loader_{F.shape}_{F.source}_{result['date']}.json")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
