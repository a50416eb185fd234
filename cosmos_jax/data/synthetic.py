"""Synthetic multi-camera driving clips in the exact Cosmos Single2MultiView layout, with their own tiny T5.

    python -m cosmos_jax.data.synthetic --out DIR [--clips 4] [--seed 0] [--embed_dim 1024] [--frames 24] [--scale 1]

A procedural street (sky gradient, asphalt with lane markings, sidewalks, building facades with windows, street
lights, moving cars / vans / trucks in lanes: some lead, some overtake or get passed, some oncoming) is ray-cast in
numpy through the 5 pinhole cameras of a Waymo-like rig (vehicle frame "x forward, y left, z up"; yaw 0, +45, -45,
+90, -90 degrees; 55 degree horizontal FOV, so neighbouring views overlap by about 10 degrees) while the ego car
drives forward at 8-12 m/s. Frames are rendered at 10 fps. Everything is a deterministic function of (seed, clip).

Written under DIR (docs/data-layout.md §1-§4 and "Rig calibration file"):

    videos/<view>/<clip_id>.mp4        H.264 (libx264, yuv420p, 10 fps, GOP 10, crf 20); front trio 3:2 (144x96 at
                                       --scale 1), sides 1920:886 (144x66)
    t5_xxl/<view>/<clip_id>.pkl        [float32 (L, D)] caption embedding, all 5 views; the front caption starts with
                                       the front prefix sentence, the other views' captions do not (like upstream's
                                       multiview JSON captions)
    cache/prefix_<view>.pkl            float32 (Lp, D): embedding of the view's prefix sentence (layout.py)
    cache/prefix_t5_embeddings_<view>.pkl   the same array under the documented name
    rig/<clip_id>.json                 the cameras the renderer used
    captions.json                      {clip_id: {view: caption text}}
    t5/                                the text encoder: spiece.model, config.json, weights.npz [, proj.npy]
    heldout/                           one more clip as a complete dataset of the same layout (videos, t5_xxl,
                                       cache, rig, captions.json); a loader pointed at DIR never lists it

Clip ids are `synth_s{seed}_{k:04d}`; the held-out clip is `synth_s{seed}_heldout_0000`.

Text encoder (`t5/`). A SentencePiece unigram model is trained at generation time on the prefix sentences, all
captions and the caption grammar's word list (pad 0, eos 1, unk 2, no BOS, as T5's spiece.model). The encoder is
a random tiny T5 (`cosmos_jax.models.t5`, relu FFN, 2 layers, 4 heads, HF's init drawn with numpy). Its d_model is
--embed_dim when that is at most 128. For a larger --embed_dim the encoder has d_model 64 and its outputs are
multiplied by a fixed random matrix `t5/proj.npy` [64, embed_dim] (entries N(0, 1/64); zeroed rows stay zero).
Embeddings follow upstream's procedure (truncate to 512 tokens, append `</s>`, pad to 512, zero and trim past the
real length). cosmos_jax/weights/t5.py's `load_encoder(DIR/t5)` returns an object whose `.embed(texts)` embeds new
prompts identically (bit-exact on the same machine).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from cosmos_jax.data import layout, pickles
from cosmos_jax.data.synthetic_render import render, render_clip
from cosmos_jax.data.synthetic_scene import (
    BASE_WIDTH,
    FACADE_COLOURS,
    FPS,
    GLASS,
    HFOV_DEG,
    LANE_W,
    POLE,
    RIG,
    TIMES_OF_DAY,
    TIRE,
    VEHICLE_COLOURS,
    VEHICLE_KINDS,
    Camera,
    Facade,
    Scene,
    TimeOfDay,
    Vehicle,
    heldout_clip_id,
    make_rig,
    make_scene,
    rig_json,
    training_clip_id,
    view_size,
)
from cosmos_jax.data.synthetic_text import (
    GRAMMAR_CORPUS,
    LANES_WORD,
    ROLE_FRONT,
    ROLE_SIDE,
    VIEW_INTRO,
    build_text_encoder,
    captions,
    train_tokenizer,
    visible_vehicles,
)
from cosmos_jax.rig import PREFIX_SENTENCES, VIEW_KEYS

if TYPE_CHECKING:
    from cosmos_jax.weights import t5 as t5_weights

__all__ = [
    "BASE_WIDTH", "FACADE_COLOURS", "FPS", "GLASS", "GRAMMAR_CORPUS", "HFOV_DEG", "LANES_WORD", "LANE_W", "MP4_CRF",
    "MP4_GOP", "PICKLE_PROTOCOL", "POLE", "RIG", "ROLE_FRONT", "ROLE_SIDE", "TIMES_OF_DAY", "TIRE",
    "VEHICLE_COLOURS", "VEHICLE_KINDS", "VIEW_INTRO", "Camera", "Facade", "Scene", "TimeOfDay",
    "Vehicle", "build_text_encoder", "captions", "generate", "heldout_clip_id", "main", "make_rig", "make_scene",
    "render", "render_clip", "rig_json", "train_tokenizer", "training_clip_id", "view_size", "visible_vehicles",
    "write_mp4",
]

PICKLE_PROTOCOL = 4
MP4_CRF = 20
MP4_GOP = 10


# ----------------------------------------------------------------------------------------------------------------
# Writing

def _dump(path: str, obj) -> None:
    pickles.dump(path, obj, PICKLE_PROTOCOL)


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def write_mp4(path: str, frames: np.ndarray) -> None:
    from cosmos_jax.data import video

    os.makedirs(os.path.dirname(path), exist_ok=True)
    video.write_mp4(path, frames, fps=FPS, crf=MP4_CRF, gop=MP4_GOP, deterministic=True)


def _write_videos(root: str, scenes: list[Scene], cams: dict[str, Camera]) -> None:
    for s in scenes:
        _write_json(layout.rig_path(root, s.clip_id), rig_json(cams))
        for view, frames in render_clip(s, cams).items():
            write_mp4(layout.video_path(root, view, s.clip_id), frames)


def _write_text(root: str, scenes: list[Scene], caps: dict[str, dict[str, str]], enc: t5_weights.TextEncoder,
                prefix_emb: dict[str, np.ndarray], cams: dict[str, Camera]) -> None:
    for view in VIEW_KEYS:
        for p in layout.prefix_paths(root, view):
            _dump(p, prefix_emb[view])
    texts = [caps[s.clip_id][v] for s in scenes for v in VIEW_KEYS]
    embs = iter(enc.embed(texts))
    for s in scenes:
        for view in VIEW_KEYS:
            _dump(layout.caption_path(root, view, s.clip_id), [next(embs)])
        _write_json(layout.rig_path(root, s.clip_id), rig_json(cams))
    _write_json(os.path.join(root, "captions.json"), {s.clip_id: caps[s.clip_id] for s in scenes})


def generate(out_dir: str, clips: int = 4, seed: int = 0, embed_dim: int = 1024, frames: int = 24,
             scale: float = 1.0, *, render_videos: bool = True, heldout: int = 1) -> dict:
    """Write the synthetic dataset (see the module docstring); returns {"clips", "heldout", "seconds"}."""
    t0 = time.time()
    cams = make_rig(scale)
    train = [make_scene(seed, k, frames) for k in range(clips)]
    held = [make_scene(seed, 1_000_000 + k, frames, clip_id=heldout_clip_id(seed, k)) for k in range(heldout)]
    if render_videos:
        # Videos first: x264's output depends on the process's floating-point state, which JAX's runtime
        # changes once it starts; encoding before the text encoder runs keeps the mp4 bytes reproducible.
        _write_videos(out_dir, train, cams)
        _write_videos(os.path.join(out_dir, "heldout"), held, cams)
    caps = {s.clip_id: captions(s, cams) for s in train + held}
    prefixes = [PREFIX_SENTENCES[v] for v in VIEW_KEYS]
    corpus = prefixes + [c for s in train + held for c in caps[s.clip_id].values()] + GRAMMAR_CORPUS
    enc = build_text_encoder(os.path.join(out_dir, "t5"), corpus, embed_dim, seed)
    prefix_emb = dict(zip(VIEW_KEYS, enc.embed(prefixes), strict=True))
    _write_text(out_dir, train, caps, enc, prefix_emb, cams)
    _write_text(os.path.join(out_dir, "heldout"), held, caps, enc, prefix_emb, cams)
    return {"clips": [s.clip_id for s in train], "heldout": [s.clip_id for s in held],
            "seconds": time.time() - t0}


def _video_paths(clips: int, seed: int, heldout: int, root: str) -> list[str]:
    """The front-view video paths that `generate` writes for these settings."""
    train = [layout.video_path(root, VIEW_KEYS[0], training_clip_id(seed, k)) for k in range(clips)]
    held = [layout.video_path(os.path.join(root, "heldout"), VIEW_KEYS[0], heldout_clip_id(seed, k))
            for k in range(heldout)]
    return train + held


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m cosmos_jax.data.synthetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="dataset root to write")
    ap.add_argument("--clips", type=int, default=4, help="training clips (a held-out clip is added under heldout/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embed_dim", type=int, default=1024, help="T5 embedding width (upstream: 1024)")
    ap.add_argument("--frames", type=int, default=24, help="frames per clip at 10 fps")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the stored video sizes (144 px wide at 1)")
    ap.add_argument("--heldout", type=int, default=1, help="held-out clips (validation, evaluate)")
    ap.add_argument("--text_only", action="store_true",
                    help="write the text (t5_xxl, cache, t5, captions) and rig files only, beside videos rendered "
                         "earlier with the same --clips/--seed/--frames/--scale/--heldout (rendering is the slow part;"
                         " the text is the same bytes either way)")
    a = ap.parse_args(argv)
    if a.text_only:
        missing = [c for c in _video_paths(a.clips, a.seed, a.heldout, a.out) if not os.path.isfile(c)]
        if missing:
            raise SystemExit(f"--text_only: {len(missing)} video(s) missing under {a.out}, e.g. {missing[0]}: render "
                             "them first (the same command without --text_only)")
    info = generate(a.out, clips=a.clips, seed=a.seed, embed_dim=a.embed_dim, frames=a.frames, scale=a.scale,
                    heldout=a.heldout, render_videos=not a.text_only)
    print(f"wrote {len(info['clips'])} training clip(s) + {len(info['heldout'])} held-out to {a.out} "
          f"in {info['seconds']:.1f} s")


if __name__ == "__main__":
    main()
