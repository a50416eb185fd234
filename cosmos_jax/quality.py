"""How good generated camera views are: cross-view consistency from the rig's calibration, and fidelity to real views.

Cross-view consistency (no real views needed): for each overlapping camera pair (front/front_left, front/front_right,
front_left/side_left, front_right/side_right) SIFT keypoints inside the two views' overlap are matched with Lowe's
ratio test, and each match is scored by its Sampson distance to the epipolar geometry that the rig calibration
implies (F = K_b^-T [t]x R K_a^-1). A pair of views that show one scene from the calibrated cameras scores ~1 px or
less; views that disagree (shifted, another scene, the front view copied) score far more or find few matches.
Reported per pair: the median Sampson distance in pixels, the fraction of matches within `inlier_px`, the match
count (over the frames sampled).

Fidelity (where real views exist: synthetic data, held-out clips): PSNR and SSIM (Wang et al. 2004: Gaussian window
11, sigma 1.5, on luma) of each generated view against the real one.

`report` scores a set of views and, for reference, the real views themselves (the ceiling) and the trivial baseline
"every view is the front view". Calibration: the rig file of the clip (`<dataset>/rig/<clip>.json`, cameras in
Waymo's frame: x forward, y left, z up), intrinsics rescaled to the frames' size.
"""

from __future__ import annotations

import json
import os

import numpy as np

PAIRS = (("pinhole_front", "pinhole_front_left"), ("pinhole_front", "pinhole_front_right"),
         ("pinhole_front_left", "pinhole_side_left"), ("pinhole_front_right", "pinhole_side_right"))
INLIER_PX = 2.0  # a match within this Sampson distance agrees with the calibrated geometry
# Waymo's camera frame (x forward, y left, z up) -> OpenCV's (x right, y down, z forward)
WAYMO_TO_CV = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])


# ---- calibration --------------------------------------------------------------------------------------------------

def load_rig(dataset_dir: str, clip: str) -> dict:
    """The clip's rig calibration file (`rig/<clip>.json`); FileNotFoundError naming it."""
    path = os.path.join(dataset_dir, "rig", os.path.splitext(os.path.basename(clip))[0] + ".json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no rig calibration for clip {clip} (cross-view metrics need it; "
                                "prepare_waymo and the synthetic rig write it)")
    with open(path) as f:
        return json.load(f)


def intrinsics(cam: dict, size_hw: tuple[int, int]) -> np.ndarray:
    """3x3 K of a rig camera for frames of `size_hw` (the stored video's intrinsics scaled to that size)."""
    h, w = size_hw
    sx, sy = w / float(cam["width"]), h / float(cam["height"])
    k = cam["intrinsics"]
    return np.array([[k["fx"] * sx, 0.0, k["cx"] * sx], [0.0, k["fy"] * sy, k["cy"] * sy], [0.0, 0.0, 1.0]])


def relative_pose(cam_a: dict, cam_b: dict) -> tuple[np.ndarray, np.ndarray]:
    """(R, t) taking OpenCV-frame points of camera a to camera b: x_b = R x_a + t."""
    ma, mb = (np.asarray(c["camera_to_vehicle"], np.float64).reshape(4, 4) for c in (cam_a, cam_b))
    ra, ta, rb, tb = ma[:3, :3], ma[:3, 3], mb[:3, :3], mb[:3, 3]
    r = WAYMO_TO_CV @ rb.T @ ra @ WAYMO_TO_CV.T
    t = WAYMO_TO_CV @ rb.T @ (ta - tb)
    return r, t


def fundamental(cam_a: dict, cam_b: dict, size_a: tuple[int, int], size_b: tuple[int, int]) -> np.ndarray:
    """F with x_b^T F x_a = 0 for pixel coordinates (pixel centres at +0.5) of frames of the given sizes."""
    r, t = relative_pose(cam_a, cam_b)
    tx = np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]])
    f = np.linalg.inv(intrinsics(cam_b, size_b)).T @ tx @ r @ np.linalg.inv(intrinsics(cam_a, size_a))
    return f / np.linalg.norm(f)


def overlap_mask(cam_a: dict, cam_b: dict, size_a: tuple[int, int], size_b: tuple[int, int],
                 depths_m=(4.0, 12.0, 40.0, 1e4)) -> np.ndarray:
    """[H, W] bool of camera a's pixels whose ray is seen by camera b at one of `depths_m` (the overlap moves with
    depth when the cameras are apart)."""
    h, w = size_a
    v, u = np.mgrid[0:h, 0:w] + 0.5
    rays = np.linalg.inv(intrinsics(cam_a, size_a)) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    r, t = relative_pose(cam_a, cam_b)
    hb, wb = size_b
    ok = np.zeros(u.size, bool)
    for depth in depths_m:
        pb = r @ (rays * depth) + t[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            uvb = intrinsics(cam_b, size_b) @ (pb / pb[2])
        ok |= (pb[2] > 0) & (uvb[0] >= 0) & (uvb[0] < wb) & (uvb[1] >= 0) & (uvb[1] < hb)
    return ok.reshape(h, w)


# ---- cross-view consistency -------------------------------------------------------------------------------------

def sampson_px(f: np.ndarray, xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """Sampson distance (pixels) of correspondences xa [N, 2] (image a) and xb [N, 2] (image b) under F."""
    ha = np.concatenate([xa, np.ones((len(xa), 1))], 1)
    hb = np.concatenate([xb, np.ones((len(xb), 1))], 1)
    fa, fb = ha @ f.T, hb @ f  # F xa (epipolar lines in b), F^T xb (lines in a)
    num = np.sum(hb * fa, axis=1) ** 2
    den = fa[:, 0] ** 2 + fa[:, 1] ** 2 + fb[:, 0] ** 2 + fb[:, 1] ** 2
    return np.sqrt(num / np.maximum(den, 1e-30))


def match(img_a: np.ndarray, img_b: np.ndarray, mask_a=None, mask_b=None, ratio: float = 0.75):
    """SIFT keypoints of two uint8 RGB images (inside the masks) matched with Lowe's ratio test: (xa, xb) [N, 2]
    in pixel coordinates (centres at +0.5)."""
    import cv2

    sift = cv2.SIFT_create()
    def detect(img, mask):
        gray = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
        m = None if mask is None else mask.astype(np.uint8) * 255
        return sift.detectAndCompute(gray, m)
    ka, da = detect(img_a, mask_a)
    kb, db = detect(img_b, mask_b)
    if da is None or db is None or len(ka) < 2 or len(kb) < 2:
        return np.zeros((0, 2)), np.zeros((0, 2))
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    xa = np.array([ka[m.queryIdx].pt for m in good], np.float64).reshape(-1, 2) + 0.5
    xb = np.array([kb[m.trainIdx].pt for m in good], np.float64).reshape(-1, 2) + 0.5
    return xa, xb


def pair_consistency(frames_a, frames_b, cam_a: dict, cam_b: dict, inlier_px: float | None = None) -> dict:
    """Cross-view consistency of two views' frames ([F, H, W, 3] uint8 each, the same F): matches over all
    frames, their median Sampson distance and inlier fraction."""
    inlier_px = INLIER_PX if inlier_px is None else inlier_px
    size_a, size_b = frames_a.shape[1:3], frames_b.shape[1:3]
    f = fundamental(cam_a, cam_b, size_a, size_b)
    ma, mb = overlap_mask(cam_a, cam_b, size_a, size_b), overlap_mask(cam_b, cam_a, size_b, size_a)
    d = np.concatenate([sampson_px(f, *match(a, b, ma, mb)) for a, b in zip(frames_a, frames_b, strict=True)])
    return {"matches": int(len(d)), "sampson_median_px": float(np.median(d)) if len(d) else float("nan"),
            "inlier_fraction": float(np.mean(d < inlier_px)) if len(d) else 0.0,
            "inliers": int(np.sum(d < inlier_px)), "_distances": d}


# ---- fidelity -----------------------------------------------------------------------------------------------------

def _luma(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def psnr(gen: np.ndarray, real: np.ndarray) -> float:
    """PSNR (dB) over all pixels and channels of uint8 frames."""
    mse = np.mean((np.asarray(gen, np.float64) - np.asarray(real, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ssim(gen: np.ndarray, real: np.ndarray) -> float:
    """Mean SSIM over frames ([F, H, W, 3] or [H, W, 3] uint8), on luma, Gaussian window 11 / sigma 1.5."""
    import cv2

    gen, real = np.asarray(gen), np.asarray(real)
    if gen.ndim == 3:
        gen, real = gen[None], real[None]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    out = []
    for g, r in zip(gen, real, strict=True):
        x, y = _luma(g), _luma(r)
        blur = lambda a: cv2.GaussianBlur(a, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)  # noqa: E731
        mx, my = blur(x), blur(y)
        sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
        out.append(float(m[5:-5, 5:-5].mean()) if min(m.shape) > 10 else float(m.mean()))
    return float(np.mean(out))


# ---- one report -------------------------------------------------------------------------------------------------

def score(views: dict[str, np.ndarray], rig: dict, real: dict[str, np.ndarray] | None = None,
          frames: int = 6) -> dict:
    """Metrics of `views` ({view name: [F, H, W, 3] uint8}): per pair consistency on `frames` evenly spaced frames,
    per view PSNR/SSIM against `real` (for the views both have, the front excluded: it is the condition)."""
    n = min(len(v) for v in views.values())
    idx = np.unique(np.linspace(0, n - 1, max(1, min(frames, n))).round().astype(int))
    out: dict = {"pairs": {}, "views": {}}
    cams = rig.get("cameras", {})
    for a, b in PAIRS:
        if a in views and b in views and a in cams and b in cams:
            out["pairs"][f"{a}/{b}"] = pair_consistency(views[a][idx], views[b][idx], cams[a], cams[b])
    for name, gen in (real and views.items()) or ():
        if name in real and name != "pinhole_front":
            m = min(len(gen), len(real[name]))
            out["views"][name] = {"psnr_db": psnr(gen[:m], real[name][:m]), "ssim": ssim(gen[:m], real[name][:m])}
    out["summary"] = summarise(out)
    return out


def summarise(metrics: dict) -> dict:
    """What a training curve plots: the median Sampson distance and inlier fraction of all pairs' matches pooled
    (pairs with few matches weigh little), the match and inlier counts, mean PSNR / SSIM over views. Drops the
    per-pair distance arrays."""
    pairs, views = list(metrics["pairs"].values()), list(metrics["views"].values())
    s = {}
    if pairs:
        d = np.concatenate([p.pop("_distances") for p in pairs])
        s["sampson_median_px"] = float(np.median(d)) if len(d) else float("nan")
        s["inlier_fraction"] = float(np.mean(d < INLIER_PX)) if len(d) else 0.0
        s["matches"] = int(len(d))
        s["inliers"] = int(np.sum(d < INLIER_PX))
    if views:
        s["psnr_db"] = float(np.mean([v["psnr_db"] for v in views]))
        s["ssim"] = float(np.mean([v["ssim"] for v in views]))
    return s


def references(real: dict[str, np.ndarray], rig: dict, frames: int = 6,
               tokenized: dict[str, np.ndarray] | None = None) -> dict:
    """The scores of the real views (the ceiling), of "every view = the front view" (the trivial baseline) and,
    given `tokenized` (the real views encoded and decoded by the training tokenizer, `Tokenizer.roundtrip`), of
    those: the ceiling for a generator that works in the tokenizer's latent space."""
    from cosmos_jax.data import video

    front = real["pinhole_front"]
    baseline = {name: video.resize(front[: len(v)], v.shape[1:3]) for name, v in real.items()}
    out = {"real": score(real, rig, None, frames), "baseline_front_copy": score(baseline, rig, real, frames)}
    if tokenized is not None:
        out["real_tokenized"] = score(tokenized, rig, real, frames)
    return out


def report(generated: dict[str, np.ndarray], real: dict[str, np.ndarray], rig: dict, frames: int = 6,
           tokenized: dict[str, np.ndarray] | None = None) -> dict:
    """The generated views' metrics beside the references' (`references`)."""
    return {"generated": score(generated, rig, real, frames), **references(real, rig, frames, tokenized)}
