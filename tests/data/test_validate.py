"""`python -m cosmos_jax.data.validate`: every problem reported with its file; exit 1 on any."""

import io
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np

from cosmos_jax.data import dataset, validate
from tests.data import fixtures as fx
from tests.data import test_dataset as dataset_test
from tests.data import test_pickles


def test_valid_dataset_summary(tmp_path):
    root = fx.build(str(tmp_path), clips=(12, 10))
    out = io.StringIO()
    assert validate.validate(dataset.DataSpec.from_config(fx.config(root)), out) == []
    text = out.getvalue()
    assert "clips 2, windows 6" in text and "fps {10.0: 10}" in text and text.rstrip().endswith("OK")


def test_problems_are_all_reported(tmp_path):
    root = fx.build(str(tmp_path), clips=(12, 10, 10))
    os.remove(os.path.join(root, "videos/pinhole_side_left/clip1.mp4"))
    fx.write_video(os.path.join(root, "videos/pinhole_front/clip2.mp4"), 6)
    fx.dump(os.path.join(root, "t5_xxl/pinhole_front/clip0.pkl"), [np.ones((3, 2), np.float32)])
    open(os.path.join(root, "videos/pinhole_front/notes.txt"), "w").close()
    fx.dump(os.path.join(root, "t5_xxl/pinhole_front/ghost.pkl"), [np.ones((3, fx.D), np.float32)])
    out = io.StringIO()
    problems = validate.validate(dataset.DataSpec.from_config(fx.config(root)), out)
    joined = "\n".join(problems)
    assert "pinhole_side_left/clip1.mp4: video file missing" in joined
    assert "pinhole_front/clip2.mp4: 6 frames, fewer than a window needs (9)" in joined
    assert "clip0.pkl: embedding width 2, expected 8" in joined
    assert "notes.txt: not a video file" in joined
    assert "extra embedding without a video" in out.getvalue() and "ghost.pkl" in out.getvalue()


def test_cli_exit_codes(tmp_path):
    root = fx.build(str(tmp_path), clips=(10,))
    args = [sys.executable, "-m", "cosmos_jax.data.validate", "--config=configs/demo.py",
            f"--config.data.dataset_dir={root}", "--config.model.crossattn_emb_channels=8"]
    ok = subprocess.run(args, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    os.remove(os.path.join(root, "cache/prefix_pinhole_side_right.pkl"))
    bad = subprocess.run(args, capture_output=True, text=True)
    assert bad.returncode == 1 and "prefix_pinhole_side_right.pkl: prefix embedding missing" in bad.stdout


def run_validate(config):
    out = io.StringIO()
    problems = validate.validate_config(config, out)
    return problems, out.getvalue()


def test_empty_or_missing_view_folder_is_one_problem(tmp_path):
    root = fx.build(str(tmp_path), clips=(10, 10, 10))
    side = os.path.join(root, "videos/pinhole_side_left")
    for n in os.listdir(side):
        os.remove(os.path.join(side, n))
    open(os.path.join(side, ".DS_Store"), "w").close()
    shutil.rmtree(os.path.join(root, "videos/pinhole_side_right"))
    problems, text = run_validate(fx.config(root))
    assert any(p.endswith("videos/pinhole_side_left/: no video files (expected one per clip, 3 clips)")
               for p in problems), problems
    assert any(p.endswith("videos/pinhole_side_right/: no such folder (expected one video per clip, 3 clips)")
               for p in problems), problems
    assert len(problems) == 2 and "PROBLEM" in text and "2 problem(s)" in text  # one each, not one per clip
    # videos whose names match no clip are the same mistake
    fx.write_video(os.path.join(root, "videos/pinhole_side_left/other.mp4"), 10)
    problems, _ = run_validate(fx.config(root))
    assert any("pinhole_side_left/: none of the 3 clips has a video here" in p and "other.mp4" in p for p in problems)


def test_empty_front_folder_is_a_problem(tmp_path):
    root = fx.build(str(tmp_path), clips=(10,))
    os.remove(os.path.join(root, "videos/pinhole_front/clip0.mp4"))
    problems, _ = run_validate(fx.config(root))
    assert any("videos/pinhole_front/: no video files" in p for p in problems), problems


def test_heldout_set_is_validated(tmp_path):
    root = fx.build(str(tmp_path / "train"), clips=(10,))
    held = fx.build(os.path.join(root, "heldout"), clips=(10, 10))
    assert validate.heldout_dir(fx.config(root)) == held
    problems, text = run_validate(fx.config(root))
    assert problems == [] and f"dataset {held}" in text
    dataset_test.break_dataset(held, "corrupt")
    problems, text = run_validate(fx.config(root))
    assert len(problems) == 1 and problems[0].startswith(f"held-out {held}: ")
    assert "heldout/videos/pinhole_front_left/clip1.mp4: cannot decode video" in problems[0]
    assert f"PROBLEM held-out {held}: " in text
    # data.val_dataset_dir wins over <dataset_dir>/heldout; a missing one is a problem (validation would be off)
    other = fx.build(str(tmp_path / "val"), clips=(10,))
    os.remove(os.path.join(other, "t5_xxl/pinhole_front/clip0.pkl"))
    problems, _ = run_validate(fx.config(root, val_dataset_dir=other))
    assert problems == [f"held-out {other}: {other}/t5_xxl/pinhole_front/clip0.pkl: caption embedding missing"]
    problems, _ = run_validate(fx.config(root, val_dataset_dir=str(tmp_path / "nowhere")))
    assert len(problems) == 1 and "nowhere: no videos/ folder" in problems[0]


def test_heldout_choice_matches_training(tmp_path):
    from cosmos_jax import validation

    root = fx.build(str(tmp_path / "train"), clips=(10,))
    assert validate.heldout_dir(fx.config(root)) is None and validation.heldout_dir(fx.config(root)) == root
    os.makedirs(os.path.join(root, "heldout/videos"))
    for c in (fx.config(root), fx.config(root, val_dataset_dir=str(tmp_path / "v"))):
        assert validate.heldout_dir(c) == validation.heldout_dir(c)


def test_unsafe_or_corrupt_pickles_are_problems_not_crashes(tmp_path):
    root = fx.build(str(tmp_path), clips=(10, 10))
    evil = pickle.dumps([test_pickles.Evil(tmp_path / "pwned")])
    with open(os.path.join(root, "cache/prefix_pinhole_side_left.pkl"), "wb") as f:
        f.write(evil)
    with open(os.path.join(root, "t5_xxl/pinhole_front/clip0.pkl"), "wb") as f:
        f.write(evil)
    with open(os.path.join(root, "t5_xxl/pinhole_front/clip1.pkl"), "wb") as f:
        f.write(b"\x80\x04\x95garbage")
    problems, _ = run_validate(fx.config(root))
    joined = "\n".join(problems)
    assert "cache/prefix_pinhole_side_left.pkl: refused to load pickle" in joined
    assert "t5_xxl/pinhole_front/clip0.pkl: refused to load pickle" in joined
    assert "t5_xxl/pinhole_front/clip1.pkl: not a readable pickle" in joined
    assert len(problems) == 3 and not (tmp_path / "pwned").exists()


def test_caption_checked_even_when_the_video_is_bad(tmp_path):
    root = fx.build(str(tmp_path), clips=(10, 10))
    with open(os.path.join(root, "videos/pinhole_front/clip0.mp4"), "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    fx.dump(os.path.join(root, "t5_xxl/pinhole_front/clip0.pkl"), [np.ones((3, 2), np.float32)])
    problems, _ = run_validate(fx.config(root))
    joined = "\n".join(problems)
    assert "pinhole_front/clip0.mp4: cannot decode video" in joined and "clip0.pkl: embedding width 2" in joined


def test_cli_checks_the_heldout_set(tmp_path):
    root = fx.build(str(tmp_path), clips=(10,))
    held = fx.build(os.path.join(root, "heldout"), clips=(10,))
    os.remove(os.path.join(held, "cache/prefix_pinhole_side_right.pkl"))
    args = [sys.executable, "-m", "cosmos_jax.data.validate", "--config=configs/demo.py",
            f"--config.data.dataset_dir={root}", "--config.model.crossattn_emb_channels=8"]
    bad = subprocess.run(args, capture_output=True, text=True)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    want = f"PROBLEM held-out {held}: {held}/cache/prefix_pinhole_side_right.pkl: prefix embedding missing"
    assert want in bad.stdout and "1 problem(s) in all" in bad.stdout
