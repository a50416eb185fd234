"""scripts/learning_table.py: the learning run's table from a job's validation rows and evaluate's metrics."""

import json
import math

import pytest

from scripts import learning_table as lt


def _rows():
    ref = {"step": 0, "kind": "val_reference", "real_sampson_median_px": 0.5, "real_inlier_fraction": 0.8,
           "real_matches": 90.0, "baseline_front_copy_sampson_median_px": 7.0,
           "baseline_front_copy_inlier_fraction": 0.3,
           "baseline_front_copy_matches": 40.0, "baseline_front_copy_psnr_db": 12.5, "baseline_front_copy_ssim": 0.33,
           "real_tokenized_psnr_db": 21.5}
    val = [{"step": s, "kind": "val", "val_loss_ema": 1.0 / (s + 1), "xview_sampson_median_px": px,
            "xview_inlier_fraction": f, "xview_matches": m, "psnr_db": p, "ssim": q}
           for s, px, f, m, p, q in [(400, 3.0, 0.5, 20.0, 14.0, 0.4), (0, math.nan, 0.0, 0.0, 9.9, 0.17)]]
    train = {"step": 50, "kind": "train", "loss": 0.4}
    return [ref, *val, train]


def test_table_orders_steps_and_keeps_the_reference(tmp_path, capsys):
    with open(tmp_path / "metrics.jsonl", "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in _rows())
    out = tmp_path / "table.json"
    assert lt.main([str(tmp_path), "--card", "test card", "--out", str(out)]) == 0
    t = json.loads(out.read_text())
    assert t["steps"] == [0, 400] and t["card"] == "test card"
    px = t["validation"]["xview_sampson_median_px"]
    assert px["step_0"] is None and px["step_400"] == 3.0  # no matches at step 0: no median, not NaN in the JSON
    assert px["baseline_front_copy"] == 7.0 and px["real"] == 0.5
    psnr = t["validation"]["psnr_db"]
    assert (psnr["step_0"], psnr["step_400"], psnr["baseline_front_copy"], psnr["real"]) == (9.9, 14.0, 12.5, None)
    assert t["curves"]["ssim"] == [0.17, 0.4] and "evaluate" not in t
    printed = capsys.readouterr().out
    assert psnr["real_tokenized"] == 21.5 and px["real_tokenized"] is None
    assert "| PSNR vs real (dB) (higher is better) | 9.9 | 14 | 12.5 | — | 21.5 |" in printed


def test_evaluate_means_are_carried(tmp_path):
    ev = {"checkpoint": "job step 400 (ema)", "clips": [{}, {}], "num_steps": 35, "guidance": 3.0,
          "means": {"generated": {"psnr_db": 13.0, "ssim": 0.4, "matches": 5.0, "inlier_fraction": 0.2},
                    "real": {"sampson_median_px": 0.5, "inlier_fraction": 0.8, "matches": 90.0}}}
    t = lt.table(_rows(), ev)
    assert t["evaluate"]["clips"] == 2
    assert t["evaluate"]["generated"]["psnr_db"] == 13.0 and t["evaluate"]["generated"]["sampson_median_px"] is None
    assert t["evaluate"]["real"]["matches"] == 90.0


def test_missing_validation_rows_are_named(tmp_path):
    with pytest.raises(SystemExit, match="kind 'val' and 'val_reference'.*'train'"):
        lt.table([{"step": 1, "kind": "train"}], None)
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\nnot json\n')
    with pytest.raises(SystemExit, match=r"metrics.jsonl:2: not a JSON line"):
        lt.main([str(tmp_path), "--card", "x"])
    with pytest.raises(SystemExit, match="missing"):
        lt.main([str(tmp_path / "nowhere"), "--card", "x"])
