"""`python -m converters.orbax_to_pt --src JOB_DIR|JOB_DIR/orbax|BASE_WEIGHTS_DIR [--step N] --dst DIR`

Our checkpoints -> upstream `.pt` files that upstream's tools load (flat `net.*` / `logvar.*` state dicts):
- a training job (or its `orbax/` folder): `iter_{N:09d}_reg_model.pt` (bf16, every floating tensor incl. buffers)
  and `iter_{N:09d}_ema_model.pt` (fp32), from the latest step or `--step`; the same code as the export at each
  save during training. For upstream inference, use the EMA file as `<checkpoint_dir>/<name>/model.pt`.
- converted base weights: `model.pt` in the stored dtype (`.pt -> Orbax -> .pt` is bit-exact).
Memory: the files are streamed one tensor at a time (cosmos_jax/weights/pt.PtWriter). A job's export restores its
params, buffers and EMA to host RAM first (7B full fine-tune: ~58 GB fp32), then adds about one block
(cosmos_jax/export.py); base weights are read one block folder at a time.
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


def _lora_scale(src: str, state) -> float:
    """alpha / rank of a LoRA job (from its config.json); 0 for a full fine-tune."""
    from cosmos_jax import checkpoint, lora
    from cosmos_jax.models import build
    from cosmos_jax.weights import tree

    if not lora.has_lora(tree.flat(state["params"])):
        return 0.0
    orbax = _orbax_dir(src)
    cfg = build.dit_config(checkpoint.job_config(os.path.dirname(os.path.abspath(orbax))))
    if not cfg.lora_rank:
        raise ValueError(f"{src}: the checkpoint holds LoRA adapters but its config.json has no lora.rank")
    return lora.scale(cfg.lora_rank, cfg.lora_alpha)


def export_job(src: str, dst: str, step: int | None = None) -> list[str]:
    """Reg + EMA `.pt` of a job's checkpoint (restores only params, buffers and EMA, on the CPU; LoRA adapters
    merged with the job's alpha / rank)."""
    from cosmos_jax import checkpoint, export

    step, state = checkpoint.restore_job_weights(src, step)
    reg, _ = export._sources(state)
    num_blocks = int(np.shape(reg[("net", "blocks", "fa", "attn", "to_q", "kernel")])[0])
    os.makedirs(dst, exist_ok=True)
    need_space(dst, export.pt_export_nbytes(state, num_blocks), f"the .pt files of step {step}")
    try:
        return list(export.export_pt(state, num_blocks, dst, step, lora_scale=_lora_scale(src, state)))
    except OSError as e:  # the writers removed their temporary files
        raise OSError(f"writing the .pt files of step {step} to {dst} failed: {e}; no partial file was left") from e


def need_space(dst: str, needed: int, what: str) -> None:
    """Refuse before writing when `dst` has less free space than `needed` (files there are replaced only once the
    new ones are complete, so they do not count as free)."""
    from cosmos_jax import checkpoint

    free = checkpoint.free_bytes(dst)
    if free < needed:
        present = sorted(n for n in os.listdir(dst) if n.endswith(".pt"))
        raise OSError(f"not enough space in {dst} for {what}: needs {needed / 1e9:.2f} GB, {free / 1e9:.2f} GB free "
                      f"(No space left on device){'; already there: ' + ', '.join(present) if present else ''}")


def export_base(src: str, dst: str) -> str:
    """`model.pt` of converted base weights, in their stored dtype; streamed: the non-block tensors, then one block
    folder at a time."""
    import orbax.checkpoint as ocp

    from cosmos_jax import base_weights
    from cosmos_jax.weights import keymap, pt, tree

    meta = base_weights.read_meta(src)
    n = meta["num_blocks"]
    stored = {p[1:]: (p[0], shape, dtype) for p, (shape, dtype) in base_weights.flat_metadata(src).items()}
    table = keymap.torch_table({p: shape for p, (_, shape, _) in stored.items()}, n)
    entries = [(key, shape, np.dtype(stored[e.path][2])) for (key, shape), (_, e, _) in
               zip(table, keymap.expand(n), strict=True)]
    ckptr = ocp.PyTreeCheckpointer()

    def load(folder: str) -> dict:
        return {p[1:]: np.asarray(a) for p, a in tree.flat(ckptr.restore(os.path.abspath(os.path.join(src, folder))))
                .items()}

    os.makedirs(dst, exist_ok=True)
    out = os.path.join(dst, "model.pt")
    need_space(dst, pt.pt_nbytes(entries, len("model.pt")), "model.pt")
    rest, block, block_i = load("rest"), None, None
    with pt.PtWriter(out, entries) as w:
        for (key, e, i), (_, _, dtype) in zip(keymap.expand(n), entries, strict=True):
            if i is None:
                arr = rest[e.path]
            else:
                if block_i != i:
                    block, block_i = None, i
                    block = load(f"block_{i:03d}")
                arr = block[e.path]
            w.add(key, np.ascontiguousarray(arr.T if e.transpose else arr).astype(dtype, copy=False))
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
    except (OSError, ValueError) as e:  # missing input, wrong input, full disk: one line, exit 1
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    for w in written:
        print(w)
    from cosmos_jax.utils import memory

    if (peak := memory.peak_device_gb()) is not None:
        print(f"peak device memory {peak:.2f} GiB")


if __name__ == "__main__":
    flags.DEFINE_string("src", None, "job directory, its orbax/ folder, or a base-weights folder", required=True)
    flags.DEFINE_string("dst", None, "output folder", required=True)
    flags.DEFINE_integer("step", None, "checkpoint step (default: latest)")
    app.run(main)
