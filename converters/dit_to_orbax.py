"""`python -m converters.dit_to_orbax --src t2w_model.pt --dst DIR [--config=configs/waymo.py] [--overwrite]`

Upstream DiT checkpoint (`.pt`: flat state dict or `{"model": ...}`, bf16 or fp32; Transformer Engine `_extra_state`
entries skipped) -> the converted folder (cosmos_jax/weights/folder.py) that `checkpoint.load_path` and `generate`
read. Strict: every source key is consumed, every leaf filled, every shape checked before anything is written;
otherwise every mismatch is printed and the exit status is 1. Tensors are streamed out of the zip one by one and
written one transformer block at a time, so peak memory is about one block plus the largest tensor, whatever the file
size. dtypes are kept (a bf16 file gives bf16 base weights); `.pt -> Orbax -> .pt` is bit-exact. The work is
cosmos_jax/weights/dit.py's `convert`.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from cosmos_jax.weights import dit, keymap
from cosmos_jax.weights.pt import PtFormatError


def main(argv):
    del argv
    f = flags.FLAGS
    try:
        summary = dit.convert(f.src, f.dst, f.config, f.overwrite)
    except (keymap.StrictLoadError, PtFormatError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(" ".join(f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", "configs/waymo.py", "config whose network the file must match",
                                    lock_config=True)
    flags.DEFINE_string("src", None, "upstream .pt file", required=True)
    flags.DEFINE_string("dst", None, "output folder", required=True)
    flags.DEFINE_bool("overwrite", False, "replace an existing conversion in --dst")
    app.run(main)
