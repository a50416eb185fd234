"""`python -m cosmos_jax.data.validate`: every problem reported with its file; exit 1 on any."""

import io
import os
import subprocess
import sys

import numpy as np

from cosmos_jax.data import dataset, validate
from tests.data import fixtures as fx


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
