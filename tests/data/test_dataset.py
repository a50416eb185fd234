"""Upstream's sampling semantics and bad-input handling over a dataset the test builds."""

import os
import shutil

import numpy as np
import pytest

from cosmos_jax.data import dataset, pickles
from tests.data import fixtures as fx


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return fx.build(str(tmp_path_factory.mktemp("ds")))


def spec(root, **data):
    return dataset.DataSpec.from_config(fx.config(root, **data))


def test_windows_sorted_and_counted(root):
    src = dataset.MultiviewWindows(spec(root))
    assert len(src) == (20 - 8) + (14 - 8) + (12 - 8)
    assert src.windows == sorted(src.windows) and src.windows[0] == ("clip0.mp4", 0)
    src2 = dataset.MultiviewWindows(spec(root, sequence_interval=2, start_frame_interval=3))
    # span 17: only clip0 (20 frames) has windows, starting at 0 and 3
    assert src2.windows == [("clip0.mp4", 0), ("clip0.mp4", 3)]


def test_front_first_sorted_and_mapped(root):
    src = dataset.MultiviewWindows(spec(root))
    seen = set()
    for seed in range(40):
        views = src.choose_views(np.random.default_rng(seed))
        assert views[0] == 0 and len(views) == 3 and len(set(views)) == 3 and list(views) == sorted(views)
        seen.update(views[1:].tolist())
    assert seen == {1, 2, 3, 4}
    s = src.load_window(0, np.array([0, 3, 4]))
    assert s["view_idx"].tolist() == [0, 4, 5]  # caption_view_idx_map {3: 4, 4: 5}
    assert s["view_choice"].tolist() == [0, 3, 4]


def test_frames_text_and_shapes(root):
    src = dataset.MultiviewWindows(spec(root))
    i = src.windows.index(("clip1.mp4", 3))
    s = src.load_window(i, np.array([0, 1, 2]))
    assert s["video"].shape == (3, 9, 16, 32, 3) and s["video"].dtype == np.uint8
    got = s["video"].reshape(3, 9, -1).mean(-1)
    np.testing.assert_allclose(got, np.broadcast_to([fx.frame_value(f) for f in range(3, 12)], (3, 9)), atol=2)
    assert float(s["fps"]) == pytest.approx(10.0)
    assert s["text"].shape == (3, 512, fx.D) and s["text_mask"].shape == (3, 512)
    # load_mv_emb False: front = its caption only; the others = only their prefix
    assert s["text_mask"].sum(1).tolist() == [5 + 1, 3 + 1, 3 + 2]
    assert np.all(s["text"][0, :6] == 100 * 1 + 0 + 1) and np.all(s["text"][1, :4] == -2)
    assert np.all(s["text"][0, 6:] == 0)
    assert s["frame_repeat"].tolist() == [0, 0, 0]
    assert set(s) == set(dataset.SAMPLE_FIELDS) - {"latents"}  # the one schema (the cache has latents instead)
    for k, v in s.items():
        assert v.dtype == dataset.SAMPLE_FIELDS[k][0], (k, v.dtype)


def test_load_mv_emb_concatenates_prefix_and_caption(root):
    src = dataset.MultiviewWindows(spec(root, load_mv_emb=True))
    s = src.load_window(0, np.array([0, 2, 4]))
    assert s["text_mask"].sum(1).tolist() == [3 + 5, 5 + 5, 7 + 5]
    assert np.all(s["text"][1, :5] == -3) and np.all(s["text"][1, 5:10] == 3)


def test_truncates_to_512(tmp_path):
    root = fx.build(str(tmp_path), clips=(10,), caption_len=600)
    s = dataset.MultiviewWindows(spec(root)).load_window(0, np.array([0, 1, 2]))
    assert s["text_mask"][0].sum() == 512 and s["text"].shape[1] == 512


def break_dataset(root, what):
    if what == "corrupt":
        with open(os.path.join(root, "videos/pinhole_front_left/clip1.mp4"), "wb") as f:
            f.write(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
        return "pinhole_front_left/clip1.mp4: cannot decode video"
    if what == "short":
        fx.write_video(os.path.join(root, "videos/pinhole_front_left/clip1.mp4"), 5)
        return "pinhole_front_left/clip1.mp4: frames"
    if what == "missing_view":
        os.remove(os.path.join(root, "videos/pinhole_front_left/clip1.mp4"))
        return "pinhole_front_left/clip1.mp4: video file missing"
    if what == "missing_embedding":
        os.remove(os.path.join(root, "t5_xxl/pinhole_front/clip1.pkl"))
        return "t5_xxl/pinhole_front/clip1.pkl: caption embedding missing"
    if what == "wrong_width":
        fx.dump(os.path.join(root, "t5_xxl/pinhole_front/clip1.pkl"), [np.ones((4, 5), np.float32)])
        return "t5_xxl/pinhole_front/clip1.pkl: embedding width 5, expected 8"
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["corrupt", "short", "missing_view", "missing_embedding", "wrong_width"])
def test_bad_input_error_names_file_or_is_counted(root, tmp_path, what):
    broken = str(tmp_path / "broken")
    shutil.copytree(root, broken)
    msg = break_dataset(broken, what)
    src = dataset.MultiviewWindows(spec(broken))
    i = src.windows.index(("clip1.mp4", 0))
    views = np.array([0, 1, 2])
    with pytest.raises(dataset.BadSampleError, match=msg.replace(".", r"\.")):
        src.load_window(i, views)
    skipper = dataset.MultiviewWindows(spec(broken, on_bad_sample="skip"))
    # the rng picks views {0,1,2} for this seed (front-left is broken in some cases)
    rng_seed = next(s for s in range(100) if skipper.choose_views(np.random.default_rng(s)).tolist() == [0, 1, 2])
    out = skipper.sample(i, np.random.default_rng(rng_seed))
    assert int(out["skipped"]) >= 1 and skipper.windows[int(out["window"])][0] != "clip1.mp4"


def test_skip_fails_only_when_every_clip_is_bad(tmp_path):
    root = fx.build(str(tmp_path), clips=(10,) * 2)
    for c in ("clip0", "clip1"):
        os.remove(os.path.join(root, f"t5_xxl/pinhole_front/{c}.pkl"))
    src = dataset.MultiviewWindows(spec(root, on_bad_sample="skip"))
    with pytest.raises(dataset.BadSampleError, match=r"every clip \(2\) is bad; last: clip\d\.mp4: .*caption emb"):
        src.sample(0, np.random.default_rng(0))
    assert sorted(src.bad_clips) == ["clip0.mp4", "clip1.mp4"]
    with pytest.raises(dataset.BadSampleError, match="every clip"):  # known bad: no decode, same answer
        src.sample(3, np.random.default_rng(1))


def test_skip_replaces_the_whole_bad_clip(tmp_path, caplog):
    root = fx.build(str(tmp_path), clips=(20, 14, 12, 11))  # 12, 6, 4, 3 windows
    src = dataset.MultiviewWindows(spec(root, on_bad_sample="skip"))
    assert [c for c, _ in src.windows].count("clip1.mp4") == 6 and len(src) == 25
    # corrupt a side view after the probe (which reads the front only): only samples that draw it fail to decode
    path = os.path.join(root, "videos/pinhole_front_left/clip1.mp4")
    with open(path, "r+b") as f:
        head = f.read(12)
        f.seek(0)
        f.truncate()
        f.write(head + os.urandom(2000))
    bad = [i for i, (c, _) in enumerate(src.windows) if c == "clip1.mp4"]
    first_clip2 = src.windows.index(("clip2.mp4", 0))
    with_front_left = next(s for s in range(100) if 1 in src.choose_views(np.random.default_rng(s)))
    without = next(s for s in range(100) if 1 not in src.choose_views(np.random.default_rng(s)))
    caplog.set_level("WARNING", logger=dataset.log.name)
    out = src.sample(bad[2], np.random.default_rng(with_front_left))
    assert int(out["window"]) == first_clip2 and int(out["skipped"]) == 1
    assert list(src.bad_clips) == ["clip1.mp4"] and "pinhole_front_left/clip1.mp4" in src.bad_clips["clip1.mp4"]
    # from now on every window of clip1 is replaced, even those whose views would decode, by the next clip's first
    out = src.sample(bad[0], np.random.default_rng(without))
    assert int(out["window"]) == first_clip2 and int(out["skipped"]) == 1
    # many samples from several threads (as grain reads): never raises, never clip1, one warning in all
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(i, s) for s in range(4) for i in range(len(src))]
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda a: src.sample(a[0], np.random.default_rng(a[1])), jobs))
    for (i, _), o in zip(jobs, outs, strict=True):
        assert src.windows[int(o["window"])][0] != "clip1.mp4"
        assert (int(o["window"]), int(o["skipped"])) == ((first_clip2, 1) if i in bad else (i, 0))
    assert sum(int(o["skipped"]) for o in outs) == 4 * len(bad)
    warned = [r for r in caplog.records if r.levelname == "WARNING" and "clip1.mp4" in r.getMessage()]
    assert len(warned) == 1 and "pinhole_front_left/clip1.mp4" in warned[0].getMessage()
    assert "cannot decode" in warned[0].getMessage() or "frames" in warned[0].getMessage()


def test_skip_scans_past_consecutive_bad_clips_and_wraps(tmp_path):
    root = fx.build(str(tmp_path), clips=(10, 10, 10))
    src = dataset.MultiviewWindows(spec(root, on_bad_sample="skip"))
    for c in ("clip1", "clip2"):
        os.remove(os.path.join(root, f"videos/pinhole_front/{c}.mp4"))
    out = src.sample(src.windows.index(("clip1.mp4", 1)), np.random.default_rng(0))
    # clip1 fails, then clip2, then the scan wraps to clip0's first window
    assert int(out["window"]) == 0 and int(out["skipped"]) == 2 and sorted(src.bad_clips) == ["clip1.mp4", "clip2.mp4"]
    assert int(src.sample(4, np.random.default_rng(0))["window"]) == 0


def test_error_mode_raises_at_once(tmp_path):
    root = fx.build(str(tmp_path), clips=(10, 10))
    src = dataset.MultiviewWindows(spec(root))
    os.remove(os.path.join(root, "videos/pinhole_front/clip0.mp4"))
    with pytest.raises(dataset.BadSampleError, match="pinhole_front/clip0.mp4: video file missing"):
        src.sample(0, np.random.default_rng(0))
    assert src.bad_clips == {}


def test_unsafe_caption_pickle_is_a_bad_sample(tmp_path):
    root = fx.build(str(tmp_path), clips=(10, 10))
    with open(os.path.join(root, "t5_xxl/pinhole_front/clip0.pkl"), "wb") as f:
        f.write(b"cos\nsystem\n(S'true'\ntR.")
    src = dataset.MultiviewWindows(spec(root, on_bad_sample="skip"))
    out = src.sample(0, np.random.default_rng(0))
    assert src.windows[int(out["window"])][0] == "clip1.mp4" and "refused to load pickle" in src.bad_clips["clip0.mp4"]


def test_missing_folder_and_prefix_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="videos/pinhole_front"):
        dataset.MultiviewWindows(spec(str(tmp_path)))
    root = fx.build(str(tmp_path / "d"), clips=(10,))
    os.remove(os.path.join(root, "cache/prefix_pinhole_side_left.pkl"))
    with pytest.raises(FileNotFoundError, match="prefix_pinhole_side_left.pkl"):
        dataset.MultiviewWindows(spec(root))


def test_bad_on_bad_sample_value(root):
    with pytest.raises(ValueError, match="on_bad_sample='ignore'"):
        spec(root, on_bad_sample="ignore")


def test_pickles_module_used_for_prefix_alias(tmp_path):
    root = fx.build(str(tmp_path), clips=(10,))
    for vi, v in enumerate(fx.VIEWS):
        os.remove(os.path.join(root, f"cache/prefix_{v}.pkl"))
        fx.dump(os.path.join(root, f"cache/prefix_t5_embeddings_{v}.pickle"), [fx.prefix(vi)[None]])
    src = dataset.MultiviewWindows(spec(root))
    assert src.prefixes[4].shape == (7, fx.D) and pickles is not None
