"""`python -m converters.orbax_to_pt --src JOB_DIR|JOB_DIR/orbax|BASE_WEIGHTS_DIR [--step N] --dst DIR`

Our checkpoints -> upstream `.pt` files that upstream's tools load (flat `net.*` / `logvar.*` state dicts):
- a training job (or its `orbax/` folder): `iter_{N:09d}_reg_model.pt` (bf16, every floating tensor incl. buffers)
  and `iter_{N:09d}_ema_model.pt` (fp32), from the latest step or `--step`; the same code as the export at each
  save during training. For upstream inference, use the EMA file as `<checkpoint_dir>/<name>/model.pt`.
- converted base weights: `model.pt` in the stored dtype (`.pt -> Orbax -> .pt` is bit-exact).
Memory: the output state dict is assembled in host RAM (7B: 14.5 GB bf16 reg, 28.9 GB fp32 EMA).
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags


def _orbax_dir(src: str) -> str | None:
    for cand in (os.path.join(src, "orbax"), src):
        if os.path.isdir(cand) and any(n.isdigit() for n in os.listdir(cand)):
            return cand
    return None


def export_job(src: str, dst: str, step: int | None = None) -> list[str]:
    """Reg + EMA `.pt` of a job's checkpoint (restores only params, buffers and EMA, on the CPU)."""
    from cosmos_jax import checkpoint

    step, state = checkpoint.restore_job_weights(src, step)
    num_blocks = np.asarray(state["params"]["net"]["blocks"]["fa"]["attn"]["to_q"]["kernel"]).shape[0]
    return list(checkpoint.export_pt(state, int(num_blocks), dst, step))


def export_base(src: str, dst: str) -> str:
    """`model.pt` of converted base weights, in their stored dtype."""
    import orbax.checkpoint as ocp

    from converters import keymap, pt_io
    from cosmos_jax import base_weights
    from cosmos_jax import train_state as ts

    meta = base_weights.read_meta(src)
    ckptr = ocp.PyTreeCheckpointer()

    def load(path):
        return ts.flat(ckptr.restore(os.path.abspath(path)))

    flat = {p[1:]: np.asarray(a) for p, a in load(os.path.join(src, "rest")).items()}
    pieces = [load(os.path.join(src, f"block_{i:03d}")) for i in range(meta["num_blocks"])]
    for p in pieces[0] if pieces else []:
        flat[p[1:]] = np.stack([np.asarray(b[p]) for b in pieces])
    os.makedirs(dst, exist_ok=True)
    out = os.path.join(dst, "model.pt")
    pt_io.save_state_dict(keymap.to_torch(flat, meta["num_blocks"]), out)
    return out


def main(argv):
    del argv
    f = flags.FLAGS
    try:
        if os.path.isfile(os.path.join(f.src, "meta.json")):
            written = [export_base(f.src, f.dst)]
        elif _orbax_dir(f.src):
            written = export_job(f.src, f.dst, f.step)
        else:
            raise FileNotFoundError(f"{f.src}: neither a job directory with orbax/<step>/ nor converted base "
                                    "weights (meta.json)")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    for w in written:
        print(w)


if __name__ == "__main__":
    flags.DEFINE_string("src", None, "job directory, its orbax/ folder, or a base-weights folder", required=True)
    flags.DEFINE_string("dst", None, "output folder", required=True)
    flags.DEFINE_integer("step", None, "checkpoint step (default: latest)")
    app.run(main)
