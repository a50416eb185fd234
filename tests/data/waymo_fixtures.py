"""Synthetic Waymo v1 segment files: real JPEG bytes, the real protobuf wire format and TFRecord framing, the five
v1 cameras at Waymo's aspect ratios scaled down by 20 (front trio 96x64 = 3:2, sides 96x44 ~ 1920:886) and
calibrations shaped like Waymo's (intrinsics scaled with the images, OpenCV distortion, camera->vehicle extrinsics
yawed 0, +-45, +-90 degrees). Frame f of camera c has a uniform background of level `background(f, c)`, so a decoded
video tells which frames it holds and in which order."""

from __future__ import annotations

import io
import math
import os

import numpy as np
from PIL import Image

from cosmos_jax.data import waymo_proto as wp
from cosmos_jax.data.layout import WAYMO_CAMERA_ENUM, WAYMO_SOURCE_NAMES
from cosmos_jax.rig import VIEW_KEYS
from tests.data import waymo_encode as we

SCALE = 0.05  # of Waymo's 1920-pixel width
SIZES = {v: ((96, 64) if "front" in v else (96, 44)) for v in VIEW_KEYS}  # (W, H)
YAW_DEG = {"pinhole_front": 0.0, "pinhole_front_left": 45.0, "pinhole_front_right": -45.0,
           "pinhole_side_left": 90.0, "pinhole_side_right": -90.0}
DISTORTION = (0.041, -0.352, 0.0011, -0.0006, 0.0)


def background(f: int, ci: int) -> int:
    return 20 + 14 * f + 3 * ci


def calibration(view: str) -> wp.CameraCalibration:
    w, h = SIZES[view]
    f = 2070.0 * SCALE * (1.0 + 0.01 * VIEW_KEYS.index(view))
    intr = (f, f * 1.001, w / 2 - 0.37, h / 2 + 0.61, *DISTORTION)
    yaw, pitch = math.radians(YAW_DEG[view]), math.radians(0.7)
    cz, sz, cy, sy = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    rot = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    t = (1.52 - 0.05 * abs(YAW_DEG[view]) / 45, 0.01 * YAW_DEG[view] / 45, 2.116)
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = rot, t
    return wp.CameraCalibration(WAYMO_CAMERA_ENUM[WAYMO_SOURCE_NAMES[view]], intr, tuple(m.ravel().tolist()), w, h)


def jpeg(f: int, ci: int, w: int, h: int) -> bytes:
    img = np.full((h, w, 3), background(f, ci), np.uint8)
    img[..., ci % 3] = np.clip(img[..., ci % 3].astype(int) + 40, 0, 255)
    x = (4 * f + 7 * ci) % (w - 16)
    img[h // 4: h // 4 + 12, x: x + 16] = (230, 200, 40)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def unknown_fields(rng: np.random.Generator, laser_bytes: int) -> bytes:
    """Fields camera preparation must skip: pose (3), a big `lasers` (5), laser_labels (6), a fixed32, a group."""
    return (we.field_bytes(3, we.encode_transform(np.eye(4).ravel().tolist()))
            + we.field_bytes(5, we.field_varint(1, 1) + we.field_bytes(2, rng.bytes(laser_bytes)))
            + we.field_bytes(6, we.field_varint(3, 7) + we.field_bytes(1, b"label"))
            + we.encode_key(12, wp.WT_FIXED32) + b"\x01\x02\x03\x04"
            + we.encode_key(13, wp.WT_START_GROUP) + we.field_varint(1, 5) + we.encode_key(13, wp.WT_END_GROUP))


def frame_record(context_name: str, f: int, rng: np.random.Generator, *, packed: bool = False,
                 laser_bytes: int = 0, drop_view: str | None = None) -> bytes:
    cals = tuple(calibration(v) for v in VIEW_KEYS)
    ctx = we.encode_context(wp.Context(context_name, cals), packed)
    ctx += we.field_bytes(4, we.field_bytes(1, b"Day") + we.field_bytes(2, b"location_sf"))  # stats: skipped
    out = we.field_bytes(1, ctx) + we.field_varint(2, 1_550_000_000_000_000 + 100_000 * f)
    out += unknown_fields(rng, laser_bytes)
    for ci, view in enumerate(VIEW_KEYS):
        if view == drop_view:
            continue
        w, h = SIZES[view]
        img = we.encode_camera_image(wp.CameraImage(WAYMO_CAMERA_ENUM[WAYMO_SOURCE_NAMES[view]], jpeg(f, ci, w, h)))
        img += we.field_bytes(3, we.encode_transform([0.0] * 16)) + we.field_doubles(5, [1.5])  # pose, timestamp
        out += we.field_bytes(4, img)
    return out


def write_segment(path: str, context_name: str, frames: int = 12, seed: int = 0, **kw) -> list[int]:
    """Write a segment file; returns the byte offset of each record."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    return we.write_records(path, [frame_record(context_name, f, rng, **kw) for f in range(frames)])
