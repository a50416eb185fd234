"""`python -m converters.t5_to_orbax --src DIR --dst DIR [--dtype keep|float32|bfloat16] [--overwrite]`

A Hugging Face `google-t5/t5-11b` folder -> the converted T5 encoder folder that `embed_captions --t5` and
`generate --t5` read (layout: cosmos_jax/weights/t5.py; docs/tokenizer-t5.md §5). What SRC must hold, what is read
and the memory it takes: cosmos_jax/weights/t5_convert.py, whose `convert` does the work. Any other key, a missing or
mis-shaped encoder tensor, or a non-float dtype is listed and the exit status is 1 (nothing is written).
"""

from __future__ import annotations

import argparse
import logging
import sys

from cosmos_jax.weights import t5_convert
from cosmos_jax.weights.keymap import StrictLoadError
from cosmos_jax.weights.pt import PtFormatError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m converters.t5_to_orbax",
                                 description="Hugging Face google-t5/t5-11b folder -> converted T5 encoder folder")
    ap.add_argument("--src", required=True, help="folder with config.json, spiece.model and the weights")
    ap.add_argument("--dst", required=True, help="output folder (pass it as --t5 to embed_captions / generate)")
    ap.add_argument("--dtype", default="keep", choices=list(t5_convert.DTYPES),
                    help="parameter dtype written (default: kept)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing conversion in --dst")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")  # orbax's INFO lines stay quiet
    t5_convert.log.setLevel(logging.INFO)
    try:
        summary = t5_convert.convert(a.src, a.dst, a.dtype, a.overwrite, progress=t5_convert.log.info)
    except (StrictLoadError, PtFormatError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
