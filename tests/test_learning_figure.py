"""scripts/learning_figure.py: the first frame row of each sample sheet, stacked and labelled with its step."""

import numpy as np
import pytest
from PIL import Image

from scripts import learning_figure as lf


def _sheet(path, value, width=60, rows=4, row_h=10):
    a = np.zeros((rows * row_h, width, 3), np.uint8)
    a[:row_h] = value  # the first frame row: what the figure keeps
    a[row_h:] = 255 - value
    Image.fromarray(a).save(path)
    return path


def test_first_rows_stacked_in_order(tmp_path):
    a = _sheet(tmp_path / "iter_000000000_sheet.png", 40)
    b = _sheet(tmp_path / "iter_000001500_sheet.png", 200)
    out = tmp_path / "fig.png"
    assert lf.main([str(a), str(b), "--out", str(out)]) == 0
    im = np.asarray(Image.open(out))
    assert im.shape == (20, lf.LABEL_W + 60, 3)
    assert (im[:10, lf.LABEL_W:] == 40).all() and (im[10:, lf.LABEL_W:] == 200).all()
    assert lf.step_of(b) == "step 1500"


def test_sheets_of_different_width_rejected(tmp_path):
    a = _sheet(tmp_path / "iter_000000000_sheet.png", 40)
    b = _sheet(tmp_path / "iter_000000500_sheet.png", 40, width=80)
    with pytest.raises(SystemExit, match="differ in width"):
        lf.main([str(a), str(b), "--out", str(tmp_path / "fig.png")])
    with pytest.raises(SystemExit, match="no such sample sheet"):
        lf.main([str(tmp_path / "missing.png"), "--out", str(tmp_path / "fig.png")])
