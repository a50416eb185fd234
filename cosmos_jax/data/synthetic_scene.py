"""The synthetic rig's cameras, scene model and numpy ray-caster (used by `cosmos_jax.data.synthetic`).

A Waymo-like 5-camera pinhole rig (`make_rig`, `rig_json`), a procedural street with lanes, vehicles, facades and
street lights drawn deterministically from (seed, clip) (`make_scene`), and a ray-caster that renders it
(`render`, `render_clip`) at `FPS` frames per second.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from cosmos_jax.data import layout
from cosmos_jax.rig import VIEW_KEYS

FPS = 10.0
BASE_WIDTH = 144  # stored width of every view at --scale 1
HFOV_DEG = 55.0
LANE_W = 3.6

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


def training_clip_id(seed: int, index: int) -> str:
    """A training clip's id: `synth_s{seed}_{index:04d}`."""
    return f"synth_s{seed}_{index:04d}"


def heldout_clip_id(seed: int, k: int) -> str:
    """The k-th held-out clip's id: `synth_s{seed}_heldout_{k:04d}`."""
    return f"synth_s{seed}_heldout_{k:04d}"


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

    scene = Scene(seed, index, clip_id or training_clip_id(seed, index), frames, tod, sun, ego_speed, ego_x0,
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
