"""Cross-view consistency and fidelity metrics (cosmos_jax/quality.py) on views with known geometry."""

import numpy as np
import pytest

from cosmos_jax import quality as q
from cosmos_jax.data import synthetic_render as sr
from cosmos_jax.data import synthetic_scene as ss


@pytest.fixture(scope="module")
def rig_views():
    cams = ss.make_rig(2.0)
    return cams, ss.rig_json(cams), sr.render_clip(ss.make_scene(0, 1, 12), cams)


def test_fundamental_matrix_from_the_rig(rig_views):
    cams, rig, _ = rig_views
    rng = np.random.default_rng(0)
    a, b = "pinhole_front", "pinhole_front_left"
    # points ahead-left of the car, seen by both cameras
    pts = np.stack([rng.uniform(8, 40, 200), rng.uniform(2, 25, 200), rng.uniform(-1, 4, 200)], 1)
    ua, va, da = cams[a].project(pts)
    ub, vb, db = cams[b].project(pts)
    keep = (da > 0) & (db > 0)
    xa, xb = np.stack([ua, va], 1)[keep], np.stack([ub, vb], 1)[keep]
    size_a = (cams[a].height, cams[a].width)
    size_b = (cams[b].height, cams[b].width)
    f = q.fundamental(rig["cameras"][a], rig["cameras"][b], size_a, size_b)
    assert keep.sum() > 100 and np.max(q.sampson_px(f, xa, xb)) < 1e-6
    assert np.median(q.sampson_px(f, xa, xb + [0.0, 5.0])) > 2.0  # moved off the epipolar lines
    # the same geometry for frames of another size (the training size): intrinsics scale with the frames
    f2 = q.fundamental(rig["cameras"][a], rig["cameras"][b], (96, 160), (96, 160))
    sa = np.array([160 / cams[a].width, 96 / cams[a].height])
    sb = np.array([160 / cams[b].width, 96 / cams[b].height])
    assert np.max(q.sampson_px(f2, xa * sa, xb * sb)) < 1e-6


def test_overlap_lies_on_the_shared_side(rig_views):
    cams, rig, _ = rig_views
    h, w = cams["pinhole_front"].height, cams["pinhole_front"].width
    left = q.overlap_mask(rig["cameras"]["pinhole_front"], rig["cameras"]["pinhole_front_left"], (h, w), (h, w))
    right = q.overlap_mask(rig["cameras"]["pinhole_front"], rig["cameras"]["pinhole_front_right"], (h, w), (h, w))
    cols = np.arange(w)
    assert 0 < left.mean() < 0.5 and cols[left.any(0)].max() < w / 2  # front_left sees the front's left edge
    assert 0 < right.mean() < 0.5 and cols[right.any(0)].min() > w / 2


def test_real_views_agree_and_wrong_ones_do_not(rig_views):
    _, rig, views = rig_views
    rep = q.report(views, views, rig)
    real, base = rep["real"]["summary"], rep["baseline_front_copy"]["summary"]
    assert real["matches"] >= 30 and real["sampson_median_px"] < 1.0 and real["inlier_fraction"] > 0.5
    assert base["sampson_median_px"] > 5.0 and base["inlier_fraction"] < 0.35
    assert rep["generated"]["summary"]["psnr_db"] == float("inf") and rep["generated"]["summary"]["ssim"] == 1.0
    assert base["psnr_db"] < 20 and base["ssim"] < 0.7
    # side views moved down by 6 px: across the (near-horizontal) epipolar lines of this rig
    moved = {k: v if k == "pinhole_front" else np.roll(v, 6, axis=1) for k, v in views.items()}
    s = q.score(moved, rig, views)["summary"]
    assert s["sampson_median_px"] > 3.0 and s["inlier_fraction"] < 0.35 and s["psnr_db"] < 30


def test_psnr_and_ssim_values():
    rng = np.random.default_rng(1)
    a = rng.integers(20, 230, (2, 32, 48, 3)).astype(np.uint8)
    assert q.psnr(a, a + np.uint8(5)) == pytest.approx(20 * np.log10(255 / 5))
    assert q.ssim(a, a) == pytest.approx(1.0)
    def noisy(std):
        return np.clip(a + rng.normal(0, std, a.shape), 0, 255).astype(np.uint8)
    assert 1.0 > q.ssim(a, noisy(10)) > q.ssim(a, noisy(40)) > q.ssim(a, rng.permutation(a.reshape(-1, 3)).reshape(
        a.shape))
    # flat images: SSIM = (2 mx my + C1) / (mx^2 + my^2 + C1), C1 = (0.01 * 255)^2 (Wang et al. 2004, Eq. 13)
    flat = np.full((1, 24, 24, 3), 100, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert q.ssim(flat, flat + np.uint8(10)) == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1))


def test_missing_rig_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"rig/clip7\.json: no rig calibration for clip clip7\.mp4"):
        q.load_rig(str(tmp_path), "clip7.mp4")
