"""What the backward pass keeps per transformer block, by remat policy (one block of the 7B at the seed shape;
traced only, nothing runs). Needs a GPU for the cuDNN attention trace.

    python scripts/saved_residuals.py [--policies attention_outside,full,dots]
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv):
    del argv
    from flax import nnx
    from jax._src.ad_checkpoint import saved_residuals

    from configs import waymo
    from cosmos_jax.models import build

    c = waymo.get_config()
    c.model.num_blocks = 1
    sds = jax.ShapeDtypeStruct
    x = dict(x_BVTHWC=sds((1, 3, 8, 72, 128, 16), jnp.float32), c_noise_B=sds((1,), jnp.float32),
             text_BVSE=sds((1, 3, 512, 1024), jnp.float32), cond_mask_BVT=sds((1, 3, 8), jnp.float32),
             view_idx_BVT=sds((1, 3, 8), jnp.int32), fps_B=sds((1,), jnp.float32),
             frame_repeat_BV=sds((1, 3), jnp.float32))
    for remat in flags.FLAGS.policies.split(","):
        c.remat = remat
        g, p, rest = nnx.split(build.abstract(build.dit_config(c)), nnx.Param, ...)

        def f(p, x, g=g, rest=rest):
            return jnp.mean(nnx.merge(g, p, rest).net(**x) ** 2)

        total, rows = 0, []
        for aval, why in saved_residuals(f, p, x):
            if "argument" in why:
                continue
            n = int(np.prod(aval.shape)) * aval.dtype.itemsize
            total += n
            if n > 50e6:
                rows.append(f"    {n / 2**30:6.3f} GiB  {aval}  {why[:100]}")
        print(f"== remat {remat}: {total / 2**30:.2f} GiB saved (the whole 1-block network)")
        print("\n".join(rows))


if __name__ == "__main__":
    flags.DEFINE_string("policies", "attention_outside,full,dots", "remat policies")
    app.run(main)
