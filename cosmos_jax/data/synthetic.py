"""Synthetic multi-camera driving clips in the exact Cosmos Single2MultiView layout, with their own tiny T5.

    python -m cosmos_jax.data.synthetic --out DIR [--clips 4] [--seed 0] [--embed_dim 1024] [--frames 24] [--scale 1]

A procedural street (sky gradient, asphalt with lane markings, sidewalks, building facades with windows, street
lights, moving cars / vans / trucks in lanes: some lead, some overtake or get passed, some oncoming) is ray-cast in
numpy through the 5 pinhole cameras of a Waymo-like rig (vehicle frame "x forward, y left, z up"; yaw 0, +45, -45,
+90, -90 degrees; 55 degree horizontal FOV, so neighbouring views overlap by about 10 degrees) while the ego car
drives forward at 8-12 m/s. Frames are rendered at 10 fps. Everything is a deterministic function of (seed, clip).

Written under DIR (spec/data-layout.md §1-§4 and "Rig calibration file"):

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
real length). `load_text_encoder(DIR/t5)` returns an object whose `.embed(texts)` embeds new prompts identically
(bit-exact on the same machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import pickle
import time
from collections.abc import Sequence

import numpy as np

from cosmos_jax.data import layout
from cosmos_jax.data.layout import VIEW_KEYS

FPS = 10.0
BASE_WIDTH = 144  # stored width of every view at --scale 1
HFOV_DEG = 55.0
LANE_W = 3.6
PICKLE_PROTOCOL = 4
MP4_CRF = 20
MP4_GOP = 10

# view: (yaw deg, downward pitch deg, position in the vehicle frame [m]); y is left, so +yaw turns left.
RIG = {
    "pinhole_front": (0.0, 2.0, (1.55, 0.0, 1.95)),
    "pinhole_front_left": (45.0, 2.0, (1.45, 0.40, 1.90)),
    "pinhole_front_right": (-45.0, 2.0, (1.45, -0.40, 1.90)),
    "pinhole_side_left": (90.0, 4.0, (1.10, 0.55, 1.85)),
    "pinhole_side_right": (-90.0, 4.0, (1.10, -0.55, 1.85)),
}


# ----------------------------------------------------------------------------------------------------------------
# Cameras

def _even(x: float) -> int:
    return max(2, 2 * int(round(x / 2)))


def view_size(view: str, scale: float = 1.0) -> tuple[int, int]:
    """(width, height): Waymo's aspect (3:2 front trio, 1920:886 sides), even for yuv420p."""
    w = _even(BASE_WIDTH * scale)
    nw, nh = layout.WAYMO_SIZES[view]
    return w, _even(w * nh / nw)


@dataclasses.dataclass(frozen=True)
class Camera:
    """A distortion-free pinhole in Waymo's camera frame (x along the optical axis, y left, z up).

    A point p_c in that frame lands at u = cx - fx * y/x, v = cy - fy * z/x, in pixels whose top-left corner is
    (0, 0): pixel (i, j) covers [i, i+1) x [j, j+1) and its centre is (i + 0.5, j + 0.5).
    """

    view: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    camera_to_vehicle: np.ndarray  # [4, 4] float64

    @property
    def rotation(self) -> np.ndarray:
        return self.camera_to_vehicle[:3, :3]

    @property
    def position(self) -> np.ndarray:
        return self.camera_to_vehicle[:3, 3]

    def pixel_rays(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Unit directions in the vehicle frame through image points (u, v) (continuous pixel coordinates)."""
        d = np.stack([np.ones_like(u, dtype=np.float64), -(u - self.cx) / self.fx, -(v - self.cy) / self.fy], -1)
        d = d @ self.rotation.T
        return d / np.linalg.norm(d, axis=-1, keepdims=True)

    def rays(self) -> np.ndarray:
        """[H*W, 3] float32 unit directions through every pixel centre, row-major."""
        v, u = np.meshgrid(np.arange(self.height) + 0.5, np.arange(self.width) + 0.5, indexing="ij")
        return self.pixel_rays(u.ravel(), v.ravel()).astype(np.float32)

    def project(self, points_vehicle: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(u, v, depth along the optical axis) of [N, 3] vehicle-frame points."""
        p = (np.asarray(points_vehicle, np.float64) - self.position) @ self.rotation
        depth = p[:, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.cx - self.fx * p[:, 1] / depth, self.cy - self.fy * p[:, 2] / depth, depth

    def to_json(self) -> dict:
        return {
            "source_name": layout.WAYMO_SOURCE_NAMES[self.view],
            "width": self.width, "height": self.height,
            "intrinsics": {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy},
            "distortion": [0.0, 0.0, 0.0, 0.0, 0.0],
            "camera_to_vehicle": [[float(x) for x in row] for row in self.camera_to_vehicle],
        }

    @classmethod
    def from_json(cls, view: str, d: dict) -> Camera:
        k = d["intrinsics"]
        return cls(view, int(d["width"]), int(d["height"]), float(k["fx"]), float(k["fy"]), float(k["cx"]),
                   float(k["cy"]), np.asarray(d["camera_to_vehicle"], np.float64).reshape(4, 4))


def _rotation(yaw_deg: float, pitch_down_deg: float) -> np.ndarray:
    y, p = math.radians(yaw_deg), math.radians(pitch_down_deg)
    rz = np.array([[math.cos(y), -math.sin(y), 0], [math.sin(y), math.cos(y), 0], [0, 0, 1]])
    ry = np.array([[math.cos(p), 0, math.sin(p)], [0, 1, 0], [-math.sin(p), 0, math.cos(p)]])  # +p tilts x down
    return rz @ ry


def make_rig(scale: float = 1.0) -> dict[str, Camera]:
    cams = {}
    for view in VIEW_KEYS:
        yaw, pitch, pos = RIG[view]
        w, h = view_size(view, scale)
        f = (w / 2) / math.tan(math.radians(HFOV_DEG) / 2)
        m = np.eye(4)
        m[:3, :3] = _rotation(yaw, pitch)
        m[:3, 3] = pos
        cams[view] = Camera(view, w, h, round(f, 6), round(f, 6), w / 2, h / 2, m)
    return cams


def rig_json(cams: dict[str, Camera]) -> dict:
    return {"frame_rate": FPS, "vehicle_frame": layout.VEHICLE_FRAME,
            "cameras": {v: cams[v].to_json() for v in VIEW_KEYS}}


# ----------------------------------------------------------------------------------------------------------------
# Scene

VEHICLE_COLOURS = {
    "red": (0.72, 0.08, 0.07), "blue": (0.10, 0.22, 0.66), "white": (0.88, 0.88, 0.86), "black": (0.06, 0.06, 0.07),
    "silver": (0.60, 0.62, 0.64), "yellow": (0.88, 0.72, 0.08), "green": (0.10, 0.45, 0.20),
    "orange": (0.90, 0.42, 0.06),
}
FACADE_COLOURS = {
    "grey": (0.52, 0.52, 0.54), "beige": (0.76, 0.68, 0.52), "red brick": (0.55, 0.25, 0.18),
    "white": (0.82, 0.82, 0.80), "blue glass": (0.30, 0.42, 0.55), "sandstone": (0.70, 0.58, 0.40),
}
# (length, width, height) in metres
VEHICLE_KINDS = {"car": (4.5, 1.85, 1.5), "van": (5.2, 2.0, 2.2), "truck": (7.5, 2.4, 3.2)}
GLASS = np.array((0.10, 0.12, 0.15), np.float32)
TIRE = np.array((0.05, 0.05, 0.05), np.float32)
POLE = np.array((0.35, 0.36, 0.38), np.float32)


@dataclasses.dataclass(frozen=True)
class TimeOfDay:
    name: str
    phrase: str
    sun_elevation: float  # degrees
    light: tuple[float, float, float]
    ambient: float
    zenith: tuple[float, float, float]
    horizon: tuple[float, float, float]
    sun_glow: float
    fog: float  # metres


TIMES_OF_DAY = (
    TimeOfDay("morning", "in soft morning light", 18, (1.0, 0.93, 0.82), 0.45, (0.35, 0.55, 0.85),
              (0.85, 0.85, 0.85), 0.5, 260.0),
    TimeOfDay("midday", "under bright midday sun", 65, (1.0, 1.0, 0.97), 0.45, (0.20, 0.45, 0.90),
              (0.72, 0.82, 0.95), 0.3, 400.0),
    TimeOfDay("late afternoon", "in warm late afternoon light", 12, (1.0, 0.80, 0.58), 0.40, (0.30, 0.45, 0.75),
              (0.95, 0.75, 0.55), 0.8, 300.0),
    TimeOfDay("overcast", "under an overcast sky", 40, (0.82, 0.84, 0.88), 0.65, (0.60, 0.63, 0.67),
              (0.78, 0.79, 0.80), 0.0, 180.0),
    TimeOfDay("dusk", "at dusk", 3, (0.75, 0.55, 0.50), 0.35, (0.10, 0.12, 0.30), (0.70, 0.45, 0.40), 0.6,
              220.0),
)


@dataclasses.dataclass
class Vehicle:
    kind: str
    colour: str
    lane: int  # 0 = rightmost same-direction lane
    y: float  # world y of the lane centre
    x0: float  # world x of the centre at t = 0
    speed: float  # world x velocity (negative: oncoming)
    role: str  # lead | overtake | passed | oncoming
    side: str  # left | right relative to the ego lane

    @property
    def size(self) -> tuple[float, float, float]:
        return VEHICLE_KINDS[self.kind]

    def x(self, t: float) -> float:
        return self.x0 + self.speed * t

    def boxes(self, t: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(lo, hi, rgb) axis-aligned boxes in world coordinates; the front is toward the direction of travel."""
        L, W, H = self.size
        xc, y = self.x(t), self.y
        s = 1.0 if self.speed >= 0 else -1.0
        rgb = np.array(VEHICLE_COLOURS[self.colour], np.float32)

        def box(x_a, x_b, half_w, z0, z1, c):  # x_a, x_b: offsets from the centre along the travel direction
            xs = sorted((xc + s * x_a, xc + s * x_b))
            return np.array([xs[0], y - half_w, z0], np.float32), np.array([xs[1], y + half_w, z1], np.float32), c

        out = [box(-L / 2 + 0.35, L / 2 - 0.35, W / 2 - 0.08, 0.0, 0.45, TIRE)]
        if self.kind == "car":
            out.append(box(-L / 2, L / 2, W / 2, 0.35, 0.95, rgb))
            out.append(box(-L * 0.32, L * 0.18, W / 2 - 0.1, 0.95, H, 0.35 * rgb + 0.65 * GLASS))
        elif self.kind == "van":
            out.append(box(-L / 2, L / 2 - 0.6, W / 2, 0.35, H, rgb))
            out.append(box(L / 2 - 0.6, L / 2, W / 2 - 0.05, 0.35, H * 0.75, 0.5 * rgb + 0.5 * GLASS))
        else:  # truck: cab + cargo box
            out.append(box(L / 2 - 2.0, L / 2, W / 2 - 0.05, 0.40, H * 0.82, rgb))
            cargo = np.array((0.85, 0.85, 0.83), np.float32) if self.colour != "white" else \
                np.array((0.55, 0.56, 0.58), np.float32)
            out.append(box(-L / 2, L / 2 - 2.15, W / 2, 0.50, H, cargo))
        return out


@dataclasses.dataclass
class Facade:
    """A row of building fronts in the plane y = y (world), facing the road; building b spans [start, end)."""

    side: str
    y: float
    starts: np.ndarray
    ends: np.ndarray
    heights: np.ndarray
    colours: np.ndarray  # [N, 3]
    colour_names: list[str]
    window_dx: np.ndarray  # window column spacing per building

    def describe(self) -> str:
        names, counts = np.unique(self.colour_names, return_counts=True)
        top = [str(n) for n in names[np.argsort(-counts, kind="stable")][:2]]
        h = float(np.median(self.heights))
        adj = "tall" if h > 18 else "low" if h < 10 else "mid-rise"
        return f"{adj} {' and '.join(top)} buildings"


@dataclasses.dataclass
class Scene:
    seed: int
    index: int
    clip_id: str
    frames: int
    tod: TimeOfDay
    sun: np.ndarray  # unit vector toward the sun, world frame
    ego_speed: float
    ego_x0: float
    n_same: int
    n_oncoming: int
    ego_lane: int
    vehicles: list[Vehicle]
    facades: dict[str, Facade]
    pole_spacing: float
    pole_phase: dict[str, float]
    pole_height: float
    asphalt: tuple[float, float, float]
    noise_salt: int

    @property
    def duration(self) -> float:
        return self.frames / FPS

    def ego_x(self, t: float) -> float:
        return self.ego_x0 + self.ego_speed * t

    def lane_y(self, j: int) -> float:
        return (j - self.ego_lane) * LANE_W

    @property
    def road_right(self) -> float:
        return self.lane_y(0) - LANE_W / 2

    @property
    def road_left(self) -> float:
        return self.lane_y(self.n_same + self.n_oncoming - 1) + LANE_W / 2

    def markings(self) -> list[tuple[float, bool, tuple[float, float, float]]]:
        """(world y, dashed, rgb) of every painted line (0.15 m wide)."""
        white, yellow = (0.92, 0.92, 0.90), (0.90, 0.72, 0.15)
        out = [(self.road_right + 0.25, False, white), (self.road_left - 0.25, False, white)]
        for j in range(1, self.n_same + self.n_oncoming):
            y = self.lane_y(j) - LANE_W / 2
            if j == self.n_same:  # double solid yellow between the directions
                out += [(y - 0.12, False, yellow), (y + 0.12, False, yellow)]
            else:
                out.append((y, True, white))
        return out

    def boxes(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """lo [M, 3], hi [M, 3], rgb [M, 3] of the vehicles and the street lights near the ego car at time t."""
        items = [b for v in self.vehicles for b in v.boxes(t)]
        ex = self.ego_x(t)
        for side, sgn in (("left", 1.0), ("right", -1.0)):
            edge = self.road_left if side == "left" else self.road_right
            yp = edge + sgn * 0.7
            k0 = math.floor((ex - 40 - self.pole_phase[side]) / self.pole_spacing)
            k1 = math.ceil((ex + 160 - self.pole_phase[side]) / self.pole_spacing)
            for k in range(k0, k1 + 1):
                x = self.pole_phase[side] + k * self.pole_spacing
                h = self.pole_height
                items.append((np.array([x - 0.1, yp - 0.1, 0], np.float32), np.array([x + 0.1, yp + 0.1, h],
                                                                                       np.float32), POLE))
                ya, yb = sorted((yp, yp - sgn * 1.8))
                items.append((np.array([x - 0.08, ya, h - 0.15], np.float32), np.array([x + 0.08, yb, h],
                                                                                         np.float32), POLE))
        lo, hi, rgb = (np.stack(z) for z in zip(*items, strict=True))
        return lo, hi, rgb


def _pick(rng: np.random.Generator, options: Sequence, p: Sequence[float] | None = None):
    return options[int(rng.choice(len(options), p=p))]


def _facade(rng: np.random.Generator, side: str, y: float, x_from: float, x_to: float, tall: bool) -> Facade:
    starts, ends, heights, cols, names, wdx = [], [], [], [], [], []
    palette = list(FACADE_COLOURS)
    favoured = [palette[int(i)] for i in rng.choice(len(palette), 2, replace=False)]
    x = x_from
    while x < x_to:
        width = float(rng.uniform(8, 24))
        gap = float(rng.choice([0.0, 0.0, rng.uniform(1.5, 5.0)]))
        starts.append(x)
        ends.append(x + width)
        heights.append(float(rng.uniform(14, 32) if tall else rng.uniform(5, 13)))
        name = favoured[int(rng.integers(2))] if rng.random() < 0.75 else palette[int(rng.integers(len(palette)))]
        names.append(name)
        cols.append(np.array(FACADE_COLOURS[name]) * rng.uniform(0.9, 1.1))
        wdx.append(float(rng.uniform(2.4, 3.6)))
        x += width + gap
    return Facade(side, y, np.array(starts, np.float32), np.array(ends, np.float32),
                  np.array(heights, np.float32), np.clip(np.array(cols, np.float32), 0, 1), names,
                  np.array(wdx, np.float32))


def _free(existing: list[Vehicle], lane: int, x0: float, speed: float, length: float, duration: float) -> bool:
    """No overlap (plus 3 m) with another vehicle of the lane during the clip; gaps are linear in t."""
    for v in existing:
        if v.lane != lane:
            continue
        need = (length + v.size[0]) / 2 + 3.0
        g0, g1 = x0 - v.x0, (x0 + speed * duration) - v.x(duration)
        if min(abs(g0), abs(g1)) < need or np.sign(g0) != np.sign(g1):
            return False
    return True


def make_scene(seed: int, index: int, frames: int, clip_id: str | None = None) -> Scene:
    """The scene of clip `index` of a dataset with `seed` (the held-out clip uses index >= 1_000_000)."""
    rng = np.random.default_rng([seed, index, 0x5EED])
    tod = TIMES_OF_DAY[int(rng.integers(len(TIMES_OF_DAY)))]
    az = math.radians(rng.uniform(0, 360))
    el = math.radians(tod.sun_elevation)
    sun = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], np.float32)
    ego_speed = float(rng.uniform(8, 12))
    ego_x0 = float(rng.uniform(0, 1000))
    n_same, n_oncoming = _pick(rng, [(1, 1), (2, 1), (2, 2), (1, 2)], p=[0.35, 0.3, 0.25, 0.1])
    ego_lane = int(rng.integers(n_same))
    duration = frames / FPS

    scene = Scene(seed, index, clip_id or f"synth_s{seed}_{index:04d}", frames, tod, sun, ego_speed, ego_x0,
                  n_same, n_oncoming, ego_lane, [], {}, float(rng.uniform(18, 30)), {}, float(rng.uniform(6, 8)),
                  tuple(float(c) for c in np.array((0.30, 0.30, 0.32)) * rng.uniform(0.85, 1.15)),
                  int(rng.integers(1 << 30)))
    colours = [str(c) for c in rng.permutation(list(VEHICLE_COLOURS))]
    kinds = list(VEHICLE_KINDS)

    def add(lane, rel0, speed, role, tries=8):
        for _ in range(tries):
            kind = _pick(rng, kinds, p=[0.65, 0.22, 0.13])
            x0 = ego_x0 + rel0() if callable(rel0) else ego_x0 + rel0
            if _free(scene.vehicles, lane, x0, speed, VEHICLE_KINDS[kind][0], duration):
                side = "left" if lane > ego_lane else "right" if lane < ego_lane else "ahead"
                scene.vehicles.append(Vehicle(kind, colours[len(scene.vehicles) % len(colours)], lane,
                                              scene.lane_y(lane), x0, speed, role, side))
                return True
        return False

    # The ego lane holds a lead vehicle (as fast as the ego car or faster, so gaps never close).
    ego_box = Vehicle("car", "white", ego_lane, 0.0, ego_x0, ego_speed, "ego", "ahead")
    scene.vehicles.append(ego_box)
    if rng.random() < 0.7:
        add(ego_lane, lambda: rng.uniform(14, 30), ego_speed + rng.uniform(0, 1.5), "lead")
    # Other same-direction lanes: a faster car overtaking, or a slower one being passed, mid-clip.
    for lane in range(n_same):
        if lane == ego_lane:
            continue
        role = _pick(rng, ["overtake", "passed", "none"], p=[0.5, 0.35, 0.15])
        dv = float(rng.uniform(3.5, 6.5))
        if role == "overtake":
            add(lane, lambda dv=dv: -dv * duration * rng.uniform(0.3, 0.6), ego_speed + dv, "overtake")
        elif role == "passed":
            add(lane, lambda dv=dv: dv * duration * rng.uniform(0.4, 0.7), ego_speed - dv, "passed")
    # Oncoming lanes: 1-2 vehicles each, spread along the road ahead.
    for lane in range(n_same, n_same + n_oncoming):
        for _ in range(int(rng.integers(1, 3))):
            speed = -float(rng.uniform(8, 13))
            closing = ego_speed - speed
            add(lane, lambda c=closing: rng.uniform(12, 20 + c * duration), speed, "oncoming")
    scene.vehicles.remove(ego_box)
    if not scene.vehicles:  # at least one other road user
        lane = n_same
        add(lane, 25.0 + (ego_speed + 10) * duration * 0.5, -10.0, "oncoming", tries=1)

    x_from, x_to = ego_x0 - 120, ego_x0 + ego_speed * duration + 600
    for side, sgn in (("left", 1.0), ("right", -1.0)):
        edge = scene.road_left if side == "left" else scene.road_right
        setback = float(rng.uniform(3.5, 8.0))
        scene.facades[side] = _facade(rng, side, edge + sgn * setback, x_from, x_to, tall=bool(rng.random() < 0.5))
        scene.pole_phase[side] = float(rng.uniform(0, scene.pole_spacing))
    return scene


# ----------------------------------------------------------------------------------------------------------------
# Rendering

def _hash(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """A float in [0, 1) per integer lattice point (uint32 mixing)."""
    h = (ix.astype(np.int64).astype(np.uint32) * np.uint32(0x9E3779B1)) ^ \
        (iy.astype(np.int64).astype(np.uint32) * np.uint32(0x85EBCA77)) ^ np.uint32(salt & 0xFFFFFFFF)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return h.astype(np.float32) * np.float32(1.0 / 4294967296.0)


def _line(dist: np.ndarray, half_width: float, footprint: np.ndarray) -> np.ndarray:
    """Box-filtered coverage of a stripe |dist| < half_width by a pixel of the given footprint (metres)."""
    fp = np.maximum(footprint, 1e-3)
    return np.clip((half_width + fp / 2 - np.abs(dist)) / fp, 0.0, np.minimum(1.0, 2 * half_width / fp))


class _CameraCache:
    """Per camera and clip: everything that does not change with time (the rig moves only along world x)."""

    def __init__(self, cam: Camera, scene: Scene):
        self.cam = cam
        d = cam.rays()
        d = np.where(np.abs(d) < 1e-6, np.float32(1e-6), d)
        self.d = d
        self.inv_d = (1.0 / d).astype(np.float32)
        o = cam.position.astype(np.float32)  # world y, z of the camera (the ego lane is centred on y = 0)
        self.o = o
        tod = scene.tod
        # Sky: gradient by elevation plus a glow around the sun; it depends on the direction only.
        el = np.clip(d[:, 2], 0, 1)[:, None]
        zen, hor = np.array(tod.zenith, np.float32), np.array(tod.horizon, np.float32)
        sky = hor + (zen - hor) * np.power(np.clip(el * 2.5, 0, 1), 0.7)
        glow = np.power(np.clip(d @ scene.sun, 0, 1), 48)[:, None] * tod.sun_glow
        self.sky = np.clip(sky + glow * np.array((1.0, 0.9, 0.7), np.float32), 0, 1).astype(np.float32)
        self.horizon = hor
        # Ground z = 0 and the two facade planes: hit distances are time-invariant.
        with np.errstate(divide="ignore"):
            self.t_ground = np.where(d[:, 2] < -1e-4, -o[2] / d[:, 2], np.inf).astype(np.float32)
        self.ground_y = (o[1] + self.t_ground * d[:, 1]).astype(np.float32)
        self.facade = {}
        for side, f in scene.facades.items():
            sgn = 1.0 if side == "left" else -1.0
            with np.errstate(divide="ignore"):
                t = np.where(d[:, 1] * sgn > 1e-4, (f.y - o[1]) / d[:, 1], np.inf).astype(np.float32)
            z = o[2] + t * d[:, 2]
            t = np.where((z >= 0) & np.isfinite(t), t, np.inf).astype(np.float32)
            self.facade[side] = (t, z.astype(np.float32))
        self.footprint = self.t_ground / np.float32(cam.fx)  # lateral metres per pixel on the ground


def _shade(albedo: np.ndarray, normal: np.ndarray, scene: Scene) -> np.ndarray:
    tod = scene.tod
    diffuse = np.clip(normal @ scene.sun, 0, 1)[..., None]
    return albedo * (tod.ambient + (1 - tod.ambient) * 1.1 * diffuse) * np.array(tod.light, np.float32)


def render(scene: Scene, cc: _CameraCache, t: float, boxes) -> np.ndarray:
    """One frame [H, W, 3] uint8 of camera `cc` at time t."""
    cam, d = cc.cam, cc.d
    n = d.shape[0]
    ox = np.float32(scene.ego_x(t) + cam.position[0])
    o = np.array([ox, cc.o[1], cc.o[2]], np.float32)
    depth = np.full(n, np.inf, np.float32)
    colour = cc.sky.copy()

    # Ground: road (asphalt, noise, markings, car shadows), sidewalks, grass behind the facades.
    tg = cc.t_ground
    hit = np.isfinite(tg)
    gx = (ox + tg[hit] * d[hit, 0]).astype(np.float32)
    gy = cc.ground_y[hit]
    fp = cc.footprint[hit]
    fade = np.clip(1.0 - fp / 0.25, 0, 1)
    base = np.empty((gx.size, 3), np.float32)
    road = (gy >= scene.road_right) & (gy <= scene.road_left)
    fl, fr = scene.facades["left"].y, scene.facades["right"].y
    walk = ~road & (gy > fr) & (gy < fl)
    grass = ~road & ~walk
    n_fine = _hash(np.floor(gx * 2), np.floor(gy * 2), scene.noise_salt) - 0.5
    n_coarse = _hash(np.floor(gx / 3), np.floor(gy / 3), scene.noise_salt + 1) - 0.5
    shade = 1.0 + (0.10 * n_fine * fade + 0.08 * n_coarse)[:, None]
    base[:] = np.array(scene.asphalt, np.float32)
    base[walk] = (0.62, 0.60, 0.56)
    base[grass] = (0.24, 0.34, 0.16)
    base *= shade
    joint = _line(np.mod(gx + 0.75, 1.5) - 0.75, 0.03, fp)
    base[walk] *= (1 - 0.35 * joint[walk])[:, None]
    for side_edge in (scene.road_left, scene.road_right):  # curbs
        c = _line(gy - side_edge, 0.12, fp)[:, None]
        base = base * (1 - c) + np.array((0.72, 0.72, 0.70), np.float32) * c
    fpx = fp / np.maximum(np.abs(d[hit, 2]), 0.02)  # footprint along the road
    for y, dashed, rgb in scene.markings():
        c = _line(gy - y, 0.075, fp)
        if dashed:
            s = np.mod(gx, 12.0)
            inside = np.where(s < 3.0, np.minimum(s, 3.0 - s), -np.minimum(s - 3.0, 12.0 - s))
            c = c * np.clip(0.5 + inside / np.maximum(fpx, 1e-3), 0, 1)
        c = (c * road)[:, None]
        base = base * (1 - c) + np.array(rgb, np.float32) * c
    for v in scene.vehicles:  # contact shadows
        L, W, _ = v.size
        inside = (np.abs(gx - v.x(t)) < L / 2 + 0.25) & (np.abs(gy - v.y) < W / 2 + 0.2)
        base[inside] *= 0.45
    depth[hit] = tg[hit]
    colour[hit] = _shade(base, np.array([0, 0, 1], np.float32), scene)

    # Facades: per building height, alleys, windows by floor and column, a cornice.
    for side, f in scene.facades.items():
        tf, zf = cc.facade[side]
        cand = np.isfinite(tf) & (tf < depth)
        idx = np.nonzero(cand)[0]
        if idx.size == 0:
            continue
        x = ox + tf[idx] * d[idx, 0]
        z = zf[idx]
        b = np.clip(np.searchsorted(f.starts, x, side="right") - 1, 0, len(f.starts) - 1)
        ok = (x >= f.starts[b]) & (x < f.ends[b]) & (z < f.heights[b])
        idx, x, z, b = idx[ok], x[ok], z[ok], b[ok]
        u = x - f.starts[b]
        alb = f.colours[b].copy()
        wx = np.mod(u / f.window_dx[b], 1.0)
        wz = np.mod(z / 3.2, 1.0)
        win = (wx > 0.25) & (wx < 0.75) & (wz > 0.3) & (wz < 0.75) & (z > 3.2) & (z < f.heights[b] - 1.0) & \
            (u > 1.0) & (u < f.ends[b] - f.starts[b] - 1.0)
        shop = (z < 2.6) & (z > 0.4) & (np.abs(np.mod(u, 5.0) - 2.5) < 1.3)
        glass = 0.6 * GLASS + 0.4 * cc.sky[idx] * 0.6
        alb[win | shop] = glass[win | shop]
        alb[z > f.heights[b] - 0.4] *= 1.15
        normal = np.array([0, -1 if side == "left" else 1, 0], np.float32)
        colour[idx] = _shade(alb, normal, scene)
        depth[idx] = tf[idx]

    # Boxes (vehicles, street lights): slab test against the candidates in front of the camera.
    lo, hi, rgb = boxes
    rel_lo, rel_hi = lo - o, hi - o
    corners = np.stack([np.where(np.array(m, bool), rel_hi, rel_lo) for m in np.ndindex(2, 2, 2)], 1)  # [M, 8, 3]
    fwd = corners @ cam.rotation[:, 0].astype(np.float32)
    keep = (fwd.max(1) > 0.1) & (np.linalg.norm(0.5 * (rel_lo + rel_hi), axis=1) < 200)
    if keep.any():
        rel_lo, rel_hi, rgb = rel_lo[keep], rel_hi[keep], rgb[keep]
        tmin3, tnear, tfar = [], None, None
        for a in range(3):  # per axis on [N, M] (a reduction over a trailing axis of 3 is slow in numpy)
            t1 = cc.inv_d[:, a, None] * rel_lo[None, :, a]
            t2 = cc.inv_d[:, a, None] * rel_hi[None, :, a]
            lo_a, hi_a = np.minimum(t1, t2), np.maximum(t1, t2)
            tmin3.append(lo_a)
            tnear = lo_a if tnear is None else np.maximum(tnear, lo_a)
            tfar = hi_a if tfar is None else np.minimum(tfar, hi_a)
        tn = np.where((tfar >= tnear) & (tnear > 0), tnear, np.float32(np.inf))
        m = tn.argmin(1)
        tb = tn[np.arange(n), m]
        sel = np.nonzero(tb < depth)[0]
        if sel.size:
            ms = m[sel]
            axis = np.argmax(np.stack([tmin3[a][sel, ms] for a in range(3)], -1), -1)
            normal = np.zeros((sel.size, 3), np.float32)
            normal[np.arange(sel.size), axis] = -np.sign(d[sel, axis])
            colour[sel] = _shade(rgb[m[sel]], normal, scene)
            depth[sel] = tb[sel]

    fog = (1.0 - np.exp(-np.where(np.isfinite(depth), depth, 0) / scene.tod.fog))[:, None]
    colour = colour * (1 - fog) + cc.horizon * fog
    img = np.clip(colour * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return img.reshape(cam.height, cam.width, 3)


def render_clip(scene: Scene, cams: dict[str, Camera]) -> dict[str, np.ndarray]:
    """{view: frames [F, H, W, 3] uint8}."""
    caches = {v: _CameraCache(c, scene) for v, c in cams.items()}
    out = {v: np.empty((scene.frames, c.height, c.width, 3), np.uint8) for v, c in cams.items()}
    for f in range(scene.frames):
        t = f / FPS
        boxes = scene.boxes(t)
        for v in cams:
            out[v][f] = render(scene, caches[v], t, boxes)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Captions

ROLE_FRONT = {
    "lead": "{A} {c} {k} drives ahead in the same lane.",
    "overtake": "{A} {c} {k} overtakes on the {s}.",
    "passed": "The ego car passes a slower {c} {k} on the {s}.",
    "oncoming": "{A} {c} {k} approaches in the oncoming lane.",
}
ROLE_SIDE = {
    "lead": "{A} {c} {k} drives ahead of the ego car.",
    "overtake": "{A} {c} {k} drives alongside in the {s} lane and pulls ahead.",
    "passed": "A slower {c} {k} in the {s} lane falls behind as the ego car passes it.",
    "oncoming": "{A} {c} {k} passes by in the oncoming lane.",
}
VIEW_INTRO = {
    "pinhole_front_left": "The view shows the road ahead and to the left",
    "pinhole_front_right": "The view shows the road ahead and to the right",
    "pinhole_side_left": "The view shows the left side of the street",
    "pinhole_side_right": "The view shows the right side of the street",
}
LANES_WORD = {2: "two-lane", 3: "three-lane", 4: "four-lane"}


def visible_vehicles(scene: Scene, cam: Camera) -> list[Vehicle]:
    """Vehicles whose centre projects inside the image, within 80 m, in at least 2 frames."""
    out = []
    for v in scene.vehicles:
        n = 0
        for f in range(scene.frames):
            t = f / FPS
            p = np.array([[v.x(t) - scene.ego_x(t), v.y, v.size[2] / 2]])
            u, w, depth = cam.project(p)
            n += int(0.5 < depth[0] < 80 and 0 <= u[0] < cam.width and 0 <= w[0] < cam.height)
        if n >= 2:
            out.append(v)
    return out


def captions(scene: Scene, cams: dict[str, Camera]) -> dict[str, str]:
    """{view: caption}; the front one starts with the front prefix sentence, the others carry no prefix."""
    lanes = LANES_WORD[scene.n_same + scene.n_oncoming]
    light = scene.tod.phrase
    left, right = scene.facades["left"].describe(), scene.facades["right"].describe()
    out = {}
    for view in VIEW_KEYS:
        vis = visible_vehicles(scene, cams[view])
        table = ROLE_FRONT if view == "pinhole_front" else ROLE_SIDE
        said = [table[v.role].format(A="An" if v.colour[0] in "aeiou" else "A", c=v.colour, k=v.kind, s=v.side)
                for v in vis]
        if view == "pinhole_front":
            others = len(scene.vehicles)
            count = f"{others} other vehicle{'s' if others != 1 else ''}"
            text = [layout.PREFIX_SENTENCES[view],
                    f"The ego car drives forward along a straight {lanes} city street {light}, with {count} nearby.",
                    *said,
                    f"{left.capitalize()} line the left side and {right} line the right side of the street.",
                    "Street lights stand along both sidewalks."]
        else:
            side = "left" if view.endswith("left") else "right"
            near = scene.facades[side].describe()
            what = "the oncoming lanes" if side == "left" and scene.ego_lane == scene.n_same - 1 else \
                "the curb and the sidewalk" if side == "right" and scene.ego_lane == 0 else "the adjacent lane"
            text = [f"{VIEW_INTRO[view]} {light}, past {what}.",
                    *(said or ["No other vehicles are visible."]),
                    f"{near.capitalize()} line the {side} side of the street, with street lights on the sidewalk."]
        out[view] = " ".join(text)
    return out


# Words of the caption grammar (so the tokenizer has pieces for prompts written in the same style).
GRAMMAR_CORPUS = [
    " ".join(VEHICLE_COLOURS) + " " + " ".join(VEHICLE_KINDS) + " " + " ".join(FACADE_COLOURS),
    " ".join(t.phrase for t in TIMES_OF_DAY) + " " + " ".join(LANES_WORD.values()),
    *ROLE_FRONT.values(), *ROLE_SIDE.values(), *VIEW_INTRO.values(),
    "tall low mid-rise buildings line the left side and the right side of the street. No other vehicles are visible.",
    "The ego car drives forward along a straight city street with other vehicles nearby, past the oncoming lanes, "
    "the curb and the sidewalk, the adjacent lane. Street lights stand along both sidewalks.",
]


# ----------------------------------------------------------------------------------------------------------------
# Text encoder

class TextEncoder:
    """A SentencePiece tokenizer + T5 encoder (+ optional fixed projection): `.embed(texts)` -> [L, D] float32."""

    def __init__(self, model, tokenizer, proj: np.ndarray | None = None, max_length: int = 512):
        self.model, self.tokenizer, self.proj, self.max_length = model, tokenizer, proj, max_length

    @property
    def embed_dim(self) -> int:
        return int(self.proj.shape[1]) if self.proj is not None else self.model.config.d_model

    def embed(self, texts: Sequence[str]) -> list[np.ndarray]:
        from cosmos_jax.models import t5

        out = t5.embed_texts(self.model, self.tokenizer, list(texts), max_length=self.max_length,
                             pad_to=self.max_length)
        if self.proj is not None:
            out = [np.ascontiguousarray((e.astype(np.float64) @ self.proj).astype(np.float32)) for e in out]
        return out


def train_tokenizer(texts: Sequence[str], vocab_size: int = 400) -> bytes:
    """A T5-style SentencePiece unigram model proto (pad 0, eos 1, unk 2, no BOS)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, num_threads=1, minloglevel=2,
        character_coverage=1.0)
    return buf.getvalue()


def build_text_encoder(out_dir: str, corpus: Sequence[str], embed_dim: int, seed: int) -> TextEncoder:
    """Train the tokenizer, initialise the encoder, write `out_dir` (spiece.model, config.json, weights.npz,
    proj.npy) and return it loaded back from there."""
    from cosmos_jax.models import t5

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "spiece.model"), "wb") as f:
        f.write(train_tokenizer(corpus))
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=os.path.join(out_dir, "spiece.model")).get_piece_size()
    d_model = embed_dim if embed_dim <= 128 else 64
    heads = 4 if d_model % 4 == 0 else 1
    cfg = t5.T5Config(vocab_size=vocab, d_model=d_model, d_kv=max(1, d_model // heads), d_ff=2 * d_model,
                      num_layers=2, num_heads=heads, feed_forward_proj="relu")
    np.savez(os.path.join(out_dir, "weights.npz"), **t5.random_state_dict(cfg, seed))
    proj_file = None
    if embed_dim != d_model:
        proj = np.random.default_rng([seed, 0x9807]).standard_normal((d_model, embed_dim)) / math.sqrt(d_model)
        proj_file = "proj.npy"
        np.save(os.path.join(out_dir, proj_file), proj.astype(np.float32))
    meta = {"t5_config": cfg.to_dict(), "embed_dim": embed_dim, "projection": proj_file, "max_length": 512,
            "tokenizer": "spiece.model", "pad_id": t5.PAD_ID, "eos_id": t5.EOS_ID, "unk_id": t5.UNK_ID,
            "note": "random tiny T5 for synthetic data (cosmos_jax.data.synthetic); not google-t5/t5-11b"}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return load_text_encoder(out_dir)


def load_text_encoder(path: str) -> TextEncoder:
    """The encoder a synthetic dataset was embedded with (`<DIR>/t5`)."""
    import sentencepiece as spm

    from cosmos_jax.models import t5

    with open(os.path.join(path, "config.json")) as f:
        meta = json.load(f)
    cfg = t5.T5Config.from_dict(meta["t5_config"])
    with np.load(os.path.join(path, "weights.npz")) as z:
        model = t5.load_state_dict(t5.abstract(cfg), {k: z[k] for k in z.files})
    proj = np.load(os.path.join(path, meta["projection"])) if meta.get("projection") else None
    tok = spm.SentencePieceProcessor(model_file=os.path.join(path, meta.get("tokenizer", "spiece.model")))
    return TextEncoder(model, tok, proj, int(meta.get("max_length", 512)))


# ----------------------------------------------------------------------------------------------------------------
# Writing

def _dump(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=PICKLE_PROTOCOL)
    os.replace(tmp, path)


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def write_mp4(path: str, frames: np.ndarray) -> None:
    from cosmos_jax.data import video

    os.makedirs(os.path.dirname(path), exist_ok=True)
    video.write_mp4(path, frames, fps=FPS, crf=MP4_CRF, gop=MP4_GOP)


def _write_dataset(root: str, scenes: list[Scene], caps: dict[str, dict[str, str]], enc: TextEncoder,
                   prefix_emb: dict[str, np.ndarray], cams: dict[str, Camera], render_videos: bool) -> None:
    for view in VIEW_KEYS:
        for p in layout.prefix_paths(root, view):
            _dump(p, prefix_emb[view])
    texts = [caps[s.clip_id][v] for s in scenes for v in VIEW_KEYS]
    embs = iter(enc.embed(texts))
    for s in scenes:
        for view in VIEW_KEYS:
            _dump(layout.caption_path(root, view, s.clip_id), [next(embs)])
        _write_json(layout.rig_path(root, s.clip_id), rig_json(cams))
        if render_videos:
            for view, frames in render_clip(s, cams).items():
                write_mp4(layout.video_path(root, view, s.clip_id), frames)
    _write_json(os.path.join(root, "captions.json"), {s.clip_id: caps[s.clip_id] for s in scenes})


def generate(out_dir: str, clips: int = 4, seed: int = 0, embed_dim: int = 1024, frames: int = 24,
             scale: float = 1.0, *, render_videos: bool = True) -> dict:
    """Write the synthetic dataset (see the module docstring); returns {"clips", "heldout", "seconds"}."""
    t0 = time.time()
    cams = make_rig(scale)
    train = [make_scene(seed, k, frames) for k in range(clips)]
    held = [make_scene(seed, 1_000_000, frames, clip_id=f"synth_s{seed}_heldout_0000")]
    caps = {s.clip_id: captions(s, cams) for s in train + held}
    prefixes = [layout.PREFIX_SENTENCES[v] for v in VIEW_KEYS]
    corpus = prefixes + [c for s in train + held for c in caps[s.clip_id].values()] + GRAMMAR_CORPUS
    enc = build_text_encoder(os.path.join(out_dir, "t5"), corpus, embed_dim, seed)
    prefix_emb = dict(zip(VIEW_KEYS, enc.embed(prefixes), strict=True))
    _write_dataset(out_dir, train, caps, enc, prefix_emb, cams, render_videos)
    _write_dataset(os.path.join(out_dir, "heldout"), held, caps, enc, prefix_emb, cams, render_videos)
    return {"clips": [s.clip_id for s in train], "heldout": [s.clip_id for s in held],
            "seconds": time.time() - t0}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m cosmos_jax.data.synthetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="dataset root to write")
    ap.add_argument("--clips", type=int, default=4, help="training clips (a held-out clip is added under heldout/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embed_dim", type=int, default=1024, help="T5 embedding width (upstream: 1024)")
    ap.add_argument("--frames", type=int, default=24, help="frames per clip at 10 fps")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the stored video sizes (144 px wide at 1)")
    a = ap.parse_args(argv)
    info = generate(a.out, clips=a.clips, seed=a.seed, embed_dim=a.embed_dim, frames=a.frames, scale=a.scale)
    print(f"wrote {len(info['clips'])} training clip(s) + {len(info['heldout'])} held-out to {a.out} "
          f"in {info['seconds']:.1f} s")


if __name__ == "__main__":
    main()
