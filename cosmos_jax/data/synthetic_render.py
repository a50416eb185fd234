"""Numpy ray caster for the synthetic driving scene: sky, textured road with lane markings, facades, poles and
box vehicles seen through the rig's pinhole cameras (the scene model is in synthetic_scene.py)."""

from __future__ import annotations

import numpy as np

from cosmos_jax.data.synthetic_scene import FPS, GLASS, Camera, Scene

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

