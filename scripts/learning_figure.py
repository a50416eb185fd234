"""The learning run's README figure: the first frame row of validation sample sheets at several steps, one above the
other, each labelled with its step (the sheets' columns: front condition, front real, then each generated view
beside its real one).

    python scripts/learning_figure.py LOGS/iter_000000000_sheet.png LOGS/iter_000001500_sheet.png --out before_after.jpg

The sheets are the job's `samples/iter_<step>_sheet.png` (scripts/gpu_learning.sh packs them into logs.tgz); all must
have the same width. --rows N: the sheet's frame rows (default 4: the first of them is kept).
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

from PIL import Image, ImageDraw

LABEL_W = 96


def step_of(path: pathlib.Path) -> str:
    m = re.search(r"iter_0*(\d+)", path.name)
    return f"step {m.group(1)}" if m else path.stem


def compose(sheets: list[pathlib.Path], rows: int) -> Image.Image:
    images = [Image.open(p).convert("RGB") for p in sheets]
    widths = {im.width for im in images}
    if len(widths) != 1:
        raise SystemExit("sheets differ in width: "
                         + ", ".join(f"{p} {im.width} px" for p, im in zip(sheets, images, strict=True)))
    width = widths.pop()
    row_h = images[0].height // rows
    out = Image.new("RGB", (LABEL_W + width, row_h * len(images)), "white")
    draw = ImageDraw.Draw(out)
    for k, (path, im) in enumerate(zip(sheets, images, strict=True)):
        if im.height < row_h:
            raise SystemExit(f"{path}: {im.height} px high, less than one row of {row_h} px")
        out.paste(im.crop((0, 0, width, row_h)), (LABEL_W, k * row_h))
        draw.text((8, k * row_h + row_h // 2), step_of(path), fill="black")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sheets", type=pathlib.Path, nargs="+")
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--out", type=pathlib.Path, required=True)
    a = p.parse_args(argv)
    for s in a.sheets:
        if not s.is_file():
            raise SystemExit(f"{s}: no such sample sheet")
    compose(a.sheets, a.rows).save(a.out, quality=88)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
