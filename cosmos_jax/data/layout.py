"""Names shared by every writer and reader of the Cosmos Single2MultiView data layout (docs/data-layout.md §1, §4, §8).

    <root>/videos/<view>/<clip_id>.mp4         <root>/t5_xxl/<view>/<clip_id>.pkl   ([float32 (L, D)])
    <root>/cache/prefix_<view>.pkl             (float32 (L, D); the name upstream's loader reads)
    <root>/cache/prefix_t5_embeddings_<view>.pkl   (same content; the name upstream's docs give)
    <root>/rig/<clip_id>.json                  (the camera calibration: docs/data-layout.md "Rig calibration")
"""

from __future__ import annotations

import os

# Waymo Open Dataset v1 `CameraName.Name` of each view, and its enum value.
WAYMO_SOURCE_NAMES = {
    "pinhole_front": "FRONT",
    "pinhole_front_left": "FRONT_LEFT",
    "pinhole_front_right": "FRONT_RIGHT",
    "pinhole_side_left": "SIDE_LEFT",
    "pinhole_side_right": "SIDE_RIGHT",
}
WAYMO_CAMERA_ENUM = {"FRONT": 1, "FRONT_LEFT": 2, "FRONT_RIGHT": 3, "SIDE_LEFT": 4, "SIDE_RIGHT": 5}

# Native Waymo v1 image sizes (width, height).
WAYMO_SIZES = {
    "pinhole_front": (1920, 1280),
    "pinhole_front_left": (1920, 1280),
    "pinhole_front_right": (1920, 1280),
    "pinhole_side_left": (1920, 886),
    "pinhole_side_right": (1920, 886),
}

FRAME_RATE = 10.0
VEHICLE_FRAME = "x forward, y left, z up"


def video_path(root: str, view: str, clip_id: str) -> str:
    return os.path.join(root, "videos", view, f"{clip_id}.mp4")


def caption_path(root: str, view: str, clip_id: str) -> str:
    return os.path.join(root, "t5_xxl", view, f"{clip_id}.pkl")


def prefix_paths(root: str, view: str) -> tuple[str, str]:
    """(the name upstream's loader reads, the documented alias)."""
    cache = os.path.join(root, "cache")
    return os.path.join(cache, f"prefix_{view}.pkl"), os.path.join(cache, f"prefix_t5_embeddings_{view}.pkl")


def rig_path(root: str, clip_id: str) -> str:
    return os.path.join(root, "rig", f"{clip_id}.json")
