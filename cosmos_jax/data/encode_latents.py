"""`python -m cosmos_jax.data.encode_latents --config=configs/waymo.py --out CACHE [--window_stride K]`

Encode every window of a dataset (all views) with the config's tokenizer into a latent cache
(cosmos_jax/data/latent_cache.py). Prints the number of windows and the cache size before it starts; a finished
cache is not rewritten (`--overwrite` to redo). Windows are encoded one at a time (the tokenizer is causal per
chunk: a window is not a slice of a longer encoding), on the GPU when there is one.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

from cosmos_jax.data import dataset, pickles
from cosmos_jax.data.latent_cache import FORMAT, INDEX, LATENTS, TEXT, pack, spec_fields
from cosmos_jax.weights import tokenizer as tok


def encode(config, out: str, window_stride: int = 1, dtype: str = "float16", overwrite: bool = False,
           progress: bool = True) -> dict:
    from array_record.python import array_record_module as arm

    if os.path.isfile(os.path.join(out, INDEX)) and not overwrite:
        raise FileExistsError(f"{out}: a cache is already there; pass --overwrite to rebuild it")
    spec = dataset.DataSpec.from_config(config)
    source = dataset.MultiviewWindows(spec)
    tokenizer = tok.from_config(config)
    clips = sorted({c for c, _ in source.windows})
    chosen = [(i, clips.index(c), s) for i, (c, s) in enumerate(source.windows) if s % window_stride == 0]
    all_views = np.arange(len(spec.view_keys))
    t_lat = spec.num_frames // tokenizer.pixel_chunk_duration * tokenizer.latent_chunk
    h, w = spec.video_size[0] // 8, spec.video_size[1] // 8
    item = np.dtype(dtype).itemsize
    window_bytes = len(all_views) * t_lat * h * w * int(config.tokenizer.latent_channels) * item
    text_bytes = len(all_views) * spec.text_tokens * (spec.embed_dim + 1) * 2
    est = len(chosen) * window_bytes + len(clips) * text_bytes
    print(f"[encode_latents] {len(chosen)} windows (stride {window_stride}) of {len(clips)} clips, {len(all_views)} "
          f"views each -> about {est / 2**30:.2f} GiB in {out}", flush=True)
    os.makedirs(out, exist_ok=True)
    enc = jax.jit(tokenizer.encode_pixels)  # raw latents: normalised when read (LatentNorm)
    t0 = time.time()
    writer = arm.ArrayRecordWriter(os.path.join(out, LATENTS + ".tmp"), "group_size:1")
    for i, _, _ in tqdm(chosen, disable=not progress, desc="windows"):
        s = source.load_window(i, all_views)
        raw_VThwC = np.asarray(enc(jnp.asarray(s["video"])[None]))[0]
        writer.write(pack(latents=raw_VThwC.astype(dtype), fps=np.float32(s["fps"])))
    writer.close()
    writer = arm.ArrayRecordWriter(os.path.join(out, TEXT + ".tmp"), "group_size:1")
    for clip in clips:
        stem = os.path.splitext(clip)[0]
        padded = [pickles.pad_tokens(source.text(v, stem), spec.text_tokens) for v in all_views]
        writer.write(pack(text=np.stack([e for e, _ in padded]).astype(np.float16),
                          text_mask=np.stack([m for _, m in padded]).astype(np.uint8)))
    writer.close()
    os.replace(os.path.join(out, LATENTS + ".tmp"), os.path.join(out, LATENTS))
    os.replace(os.path.join(out, TEXT + ".tmp"), os.path.join(out, TEXT))
    index = {"format": FORMAT, "clips": clips, "windows": [[ci, s] for _, ci, s in chosen],
             "latent_shape": [t_lat, h, w, int(config.tokenizer.latent_channels)], "dtype": dtype,
             "tokenizer": config.tokenizer.name, "window_stride": window_stride, "data": spec_fields(spec)}
    with open(os.path.join(out, INDEX + ".tmp"), "w") as f:
        json.dump(index, f)
    os.replace(os.path.join(out, INDEX + ".tmp"), os.path.join(out, INDEX))  # last: marks the cache complete
    return {"windows": len(chosen), "clips": len(clips), "seconds": round(time.time() - t0, 1),
            "bytes": sum(os.path.getsize(os.path.join(out, n)) for n in (LATENTS, TEXT))}


def main(argv):
    del argv
    f = flags.FLAGS
    try:
        summary = encode(f.config, f.out, f.window_stride, f.dtype, f.overwrite)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(summary))


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]", lock_config=True)
    flags.DEFINE_string("out", None, "cache folder", required=True)
    flags.DEFINE_integer("window_stride", 1, "encode windows starting every K frames (1 = every window)")
    flags.DEFINE_enum("dtype", "float16", ["float16", "float32"], "stored dtype of the raw latents")
    flags.DEFINE_bool("overwrite", False, "rebuild an existing cache")
    app.run(main)
