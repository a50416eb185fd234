"""Encoder throughput: Cosmos-Tokenize1-CV8x8x8 (encode and decode one 57-frame 576x1024 view) and the T5-11b
encoder (a batch of 512-token captions), random weights of the released sizes, in bf16 (tokenizer) and fp32/bf16
(T5). JSON to bench/results/.

    python scripts/bench_encoders.py [--views 1] [--t5_batch 16] [--t5_dtype bfloat16]
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys

import jax
import jax.numpy as jnp
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts.bench_common import peak_memory_gb, timed, write_result  # noqa: E402


def main(argv):
    del argv
    from flax import nnx

    from cosmos_jax.models import cosmos_tokenizer as ct
    from cosmos_jax.models import t5

    F = flags.FLAGS
    res = {"card": jax.devices()[0].device_kind, "date": datetime.date.today().isoformat(),
           "command": " ".join(["python", "scripts/bench_encoders.py", *sys.argv[1:]])}
    cfg = ct.Cosmos8x8x8Config.release(dtype="bfloat16")

    def zeros_like_abstract(make_module):
        """(graphdef, state of small constants): timing does not depend on the values, and a random init of an
        11B-parameter network is a very slow program to compile."""
        with nnx.use_eager_sharding(False):
            g, st = nnx.split(nnx.eval_shape(make_module))
        return g, jax.tree.map(lambda a: jnp.full(a.shape, 0.01, a.dtype), st)

    eg, es = zeros_like_abstract(lambda: ct.CosmosEncoder(cfg, rngs=nnx.Rngs(0)))
    dg, ds = zeros_like_abstract(lambda: ct.CosmosDecoder(cfg, rngs=nnx.Rngs(1)))
    enc = jax.jit(lambda s, x: nnx.merge(eg, s)(x))
    dec = jax.jit(lambda s, z: nnx.merge(dg, s)(z))
    x = jnp.zeros((F.views, 57, 576, 1024, 3), jnp.bfloat16)
    t_enc = timed(enc, es, x)
    z = enc(es, x)
    t_dec = timed(dec, ds, z)
    res["tokenizer"] = {"views": F.views, "frames": 57, "size": [576, 1024], "dtype": "bfloat16",
                        "encode_s": t_enc, "decode_s": t_dec, "latent_shape": list(z.shape),
                        "encode_frames_per_s": 57 * F.views / t_enc}
    print(json.dumps(res["tokenizer"]), flush=True)
    del es, ds
    tcfg = dataclasses.replace(t5.T5Config.t5_11b(), dtype=F.t5_dtype)

    tg, tstate = zeros_like_abstract(lambda: t5.T5Encoder(tcfg, rngs=nnx.Rngs(0)))
    if F.t5_dtype == "bfloat16":
        tstate = jax.tree.map(lambda a: a.astype(jnp.bfloat16), tstate)
    fwd = jax.jit(lambda s, ids, m: nnx.merge(tg, s)(ids, m))
    ids = jnp.ones((F.t5_batch, 512), jnp.int32)
    mask = jnp.ones((F.t5_batch, 512), jnp.int32)
    t_t5 = timed(fwd, tstate, ids, mask, reps=3)
    res["t5"] = {"config": "t5-11b encoder", "dtype": F.t5_dtype, "batch": F.t5_batch, "tokens": 512,
                 "batch_s": t_t5, "captions_per_s": F.t5_batch / t_t5}
    res["peak_memory_gb"] = peak_memory_gb(jax.devices()[:1]) or 0.0
    write_result(res, F.out, f"encoders_{res['card'].replace(' ', '-')}.json")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    flags.DEFINE_integer("views", 1, "views encoded together")
    flags.DEFINE_integer("t5_batch", 16, "captions per T5 batch")
    flags.DEFINE_enum("t5_dtype", "bfloat16", ["bfloat16", "float32"], "T5 weights and compute dtype")
    flags.DEFINE_string("out", "bench/results", "output folder")
    app.run(main)
