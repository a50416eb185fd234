"""`python -m converters.tokenizer_to_orbax --src DIR --dst DIR [--arch='{"channels": 128}'] [--overwrite]`

Cosmos-Tokenize1-CV8x8x8-720p release files (`encoder.jit`, `decoder.jit`, `mean_std.pt` in --src) -> the folder
`tokenizer.checkpoint_dir` points at (docs/tokenizer-t5.md §2-§3). What is read, kept, dropped and written:
cosmos_jax/weights/tokenizer.py, whose `convert` does the work. Any key problem is listed and the exit status is 1
(nothing is written).
"""

from __future__ import annotations

import json
import sys


def main(argv):
    from absl import flags, logging

    from cosmos_jax.models import cosmos_tokenizer as ct
    from cosmos_jax.weights import tokenizer
    from cosmos_jax.weights.keymap import StrictLoadError

    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save step at INFO
    f = flags.FLAGS
    try:
        arch = json.loads(f.arch) if f.arch else {}
        if not isinstance(arch, dict):
            raise ValueError(f"--arch={f.arch!r}: expected a JSON object of Cosmos8x8x8Config fields")
        summary = tokenizer.convert(f.src, f.dst, ct.Cosmos8x8x8Config.release(**arch), f.overwrite)
    except (StrictLoadError, FileExistsError, FileNotFoundError, ValueError, TypeError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(" ".join(f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("src", None, "folder with encoder.jit, decoder.jit and mean_std.pt", required=True)
    flags.DEFINE_string("dst", None, "output folder (tokenizer.checkpoint_dir)", required=True)
    flags.DEFINE_string("arch", "", "JSON overrides of Cosmos8x8x8Config (default: the 720p release)")
    flags.DEFINE_bool("overwrite", False, "replace an existing conversion in --dst")
    app.run(main)
