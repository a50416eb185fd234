"""`python -m converters.orbax_to_pt --src JOB_DIR|JOB_DIR/orbax|BASE_WEIGHTS_DIR [--step N] --dst DIR`

Our checkpoints -> upstream `.pt` files that upstream's tools load (flat `net.*` / `logvar.*` state dicts):
- a training job (or its `orbax/` folder): `iter_{N:09d}_reg_model.pt` (bf16, every floating tensor incl. buffers)
  and `iter_{N:09d}_ema_model.pt` (fp32), from the latest step or `--step`; the same code as the export at each
  save during training. For upstream inference, use the EMA file as `<checkpoint_dir>/<name>/model.pt`.
- converted base weights: `model.pt` in the stored dtype (`.pt -> Orbax -> .pt` is bit-exact).
Memory: the files are streamed one tensor at a time (`PtWriter`, cosmos_jax/weights/pt.py). A job's export restores its
params, buffers and EMA to host RAM first (7B full fine-tune: ~58 GB fp32), then adds about one block; base weights are
read one block folder at a time. The work is cosmos_jax/weights/export.py's `export`.
"""

from __future__ import annotations

import sys

from absl import app, flags


def main(argv):
    from cosmos_jax.utils import memory
    from cosmos_jax.weights import export

    del argv
    f = flags.FLAGS
    try:
        written = export.export(f.src, f.dst, f.step)
    except (OSError, ValueError) as e:  # missing input, wrong input, full disk: one line, exit 1
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    for w in written:
        print(w)
    if (peak := memory.peak_device_gb()) is not None:
        print(f"peak device memory {peak:.2f} GiB")


if __name__ == "__main__":
    flags.DEFINE_string("src", None, "job directory, its orbax/ folder, or a base-weights folder", required=True)
    flags.DEFINE_string("dst", None, "output folder", required=True)
    flags.DEFINE_integer("step", None, "checkpoint step (default: latest)")
    app.run(main)
