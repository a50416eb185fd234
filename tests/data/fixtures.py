"""A small dataset in the Cosmos layout built by the tests themselves: frame f of every video is uniform gray
20 + 9 f, so a decoded window tells which frames were read."""

from __future__ import annotations

import os
import pickle

import numpy as np

from cosmos_jax.data import video

VIEWS = ("pinhole_front", "pinhole_front_left", "pinhole_front_right", "pinhole_side_left", "pinhole_side_right")
D = 8


def frame_value(f: int) -> int:
    return 20 + 9 * f


def write_video(path: str, n: int, h: int = 32, w: int = 48, fps: float = 10.0) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    frames = np.stack([np.full((h, w, 3), frame_value(f), np.uint8) for f in range(n)])
    video.write_mp4(path, frames, fps=fps, crf=10, gop=5)


def dump(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def caption(clip_i: int, view_i: int, length: int) -> np.ndarray:
    return np.full((length, D), 100 * clip_i + view_i + 1, np.float32)


def prefix(view_i: int) -> np.ndarray:
    return np.full((3 + view_i, D), -(view_i + 1), np.float32)


def build(root: str, clips=(20, 14, 12), caption_len: int = 5) -> str:
    for ci, n in enumerate(clips):
        name = f"clip{ci}"
        for vi, view in enumerate(VIEWS):
            write_video(os.path.join(root, "videos", view, f"{name}.mp4"), n)
            dump(os.path.join(root, "t5_xxl", view, f"{name}.pkl"), [caption(ci, vi, caption_len + ci)])
    for vi, view in enumerate(VIEWS):
        dump(os.path.join(root, "cache", f"prefix_{view}.pkl"), prefix(vi))
    return root


def config(root: str, **data):
    from configs import demo

    c = demo.get_config()
    c.data.dataset_dir = root
    c.data.num_frames = 9
    c.data.video_size = (16, 32)
    c.model.crossattn_emb_channels = D
    for k, v in data.items():
        setattr(c.data, k, v)
    return c
