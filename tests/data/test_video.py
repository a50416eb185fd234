"""Reading video windows resized while they are decoded (the training and generate path)."""

import numpy as np
import pytest

from cosmos_jax.data import video


def smooth_clip(n=6, h=96, w=160):
    """Low-frequency colour fields that move, with per-pixel gradients like a 1920-wide natural frame's (at most
    about 1.5 levels per pixel): chroma siting then moves values by well under a level."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    frames = []
    for f in range(n):
        r = 128 + 90 * np.sin(0.5 * np.pi * (xx + 0.05 * f))
        g = 128 + 80 * np.cos(0.5 * np.pi * (yy - 0.03 * f))
        b = 128 + 70 * np.sin(0.5 * np.pi * (xx + yy))
        frames.append(np.stack([r, g, b], -1).astype(np.uint8))
    return np.stack(frames)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("video") / "smooth.mp4")
    video.write_mp4(path, smooth_clip(), fps=10, crf=12, gop=3, deterministic=True)
    return path


def test_resize_while_reading_matches_convert_then_resize(clip):
    ids = [1, 2, 4]
    rgb_first = video.resize(video.read_frames(clip, ids), (48, 80))
    planes = video.read_frames(clip, ids, (48, 80))
    assert planes.shape == (3, 48, 80, 3) and planes.dtype == np.uint8
    d = np.abs(planes.astype(int) - rgb_first)
    assert d.mean() < 1.0 and np.percentile(d, 99) <= 4, (d.mean(), np.percentile(d, 99))
    # Channel means survive (a swapped or misplaced chroma plane would move them by tens of levels).
    np.testing.assert_allclose(planes.reshape(-1, 3).mean(0), rgb_first.reshape(-1, 3).mean(0), atol=1.0)


def test_other_sizes_convert_first(clip):
    ids = [0, 3]
    np.testing.assert_array_equal(video.read_frames(clip, ids, (47, 81)),
                                  video.resize(video.read_frames(clip, ids), (47, 81)))  # odd: RGB path
    np.testing.assert_array_equal(video.read_frames(clip, ids, (96, 160)), video.read_frames(clip, ids))


def test_solid_colour_keeps_its_value(tmp_path):
    colour = np.array([200, 60, 30], np.uint8)
    path = str(tmp_path / "solid.mp4")
    video.write_mp4(path, np.broadcast_to(colour, (3, 64, 96, 3)).copy(), fps=10, crf=0, deterministic=True)
    full = video.read_frames(path, [1])
    small = video.read_frames(path, [1], (32, 48))
    np.testing.assert_allclose(small.reshape(-1, 3).mean(0), full.reshape(-1, 3).mean(0), atol=1.0)
