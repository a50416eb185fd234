"""`python -m converters.keys --config=configs/waymo.py[:t2w|:v2w]`: the upstream key table of a config.

Computed abstractly (no weights are allocated): one line per tensor, `KEY<TAB>d0,d1,...`, in upstream's order, and
nothing else on stdout.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags


def table(config) -> list[tuple[str, tuple[int, ...]]]:
    from cosmos_jax.weights import dit, keymap

    return keymap.torch_table(*dit.config_shapes(config))


def main(argv):
    del argv
    if flags.FLAGS.config is None:
        raise app.UsageError("--config is required")
    lines = [f"{k}\t{','.join(map(str, s))}" for k, s in table(flags.FLAGS.config)]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]", lock_config=True)
    app.run(main)
