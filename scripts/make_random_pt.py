"""An upstream-layout `.pt` of a randomly initialised network, for end-to-end runs without the released files.

    python scripts/make_random_pt.py --config=configs/waymo.py --dst /tmp/dit_7b.pt [--dtype bfloat16] [--seed 0]

The network is initialised on the default device (our init, upstream's key names and shapes through
cosmos_jax/weights/keymap.py) and streamed to the file one tensor at a time with the same writer as the training
export, so host memory stays at about one tensor. `python -m converters.dit_to_orbax` converts it like `t2w_model.pt`.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cosmos_jax import train_state as ts  # noqa: E402
from cosmos_jax.models import build  # noqa: E402
from cosmos_jax.models.dit import DiffusionNet  # noqa: E402
from cosmos_jax.weights import keymap, pt, tree  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/waymo.py", "config whose network is made")
flags.DEFINE_string("dst", None, "output .pt", required=True)
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "dtype of the stored tensors")
flags.DEFINE_integer("seed", 0, "init seed")
flags.DEFINE_float("perturb", 0.02, "std of the noise that replaces zero-initialised tensors (final layer, AdaLN "
                   "up-projections: at init every block is an identity and the output ignores the blocks, so a LoRA of "
                   "the blocks would get no gradient); 0 keeps our init exactly")
F = flags.FLAGS


def make(config, dst: str, dtype: str = "bfloat16", seed: int = 0, perturb: float = 0.0) -> dict:
    c = config.copy_and_resolve_references()
    c.lora.rank = 0
    cfg = build.dit_config(c)

    def init():
        with nnx.use_eager_sharding(False):
            _, params, buffers = ts.split(DiffusionNet(cfg, rngs=nnx.Rngs(seed)))
        return {**tree.flat(params), **tree.flat(buffers)}

    t = time.time()
    flat = jax.jit(init)()
    if perturb:
        noise = jax.jit(lambda x, k: jnp.where(jnp.all(x == 0), perturb * jax.random.normal(k, x.shape, x.dtype), x))
        key = jax.random.key(seed + 1)
        flat = {p: noise(x, jax.random.fold_in(key, n)) for n, (p, x) in enumerate(sorted(flat.items()))}
    jax.block_until_ready(flat)
    init_s = time.time() - t
    n = cfg.num_blocks
    out_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32
    table = keymap.torch_table({p: tuple(a.shape) for p, a in flat.items()}, n)
    take = jax.jit(lambda x, i, transpose: (x[i].T if transpose else x[i]).astype(out_dtype),
                   static_argnums=2)
    whole = jax.jit(lambda x, transpose: (x.T if transpose else x).astype(out_dtype), static_argnums=1)
    t = time.time()
    w = pt.PtWriter(dst, [(k, s, out_dtype) for k, s in table])
    try:
        for key, e, i in keymap.expand(n):
            x = flat[e.path]
            y = take(x, jnp.int32(i), e.transpose) if e.stacked else whole(x, e.transpose)
            w.add(key, np.asarray(jax.device_get(y)))
        w.close()
    except BaseException:
        w.abort()
        raise
    return {"init_s": round(init_s, 2), "write_s": round(time.time() - t, 2), "tensors": len(table),
            "bytes": os.path.getsize(dst)}


def main(argv):
    del argv
    info = make(F.config, F.dst, F.dtype, F.seed, F.perturb)
    print(f"wrote {F.dst}: {info}")


if __name__ == "__main__":
    app.run(main)
