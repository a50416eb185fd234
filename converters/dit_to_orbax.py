"""`python -m converters.dit_to_orbax --src t2w_model.pt --dst DIR [--config=configs/waymo.py]`

Upstream DiT checkpoint (`.pt`: flat state dict or `{"model": ...}`, bf16 or fp32; Transformer Engine `_extra_state`
entries skipped) -> base weights (cosmos_jax/base_weights.py) that `checkpoint.load_path` and `generate` read.
Strict: every source key is consumed, every leaf filled, every shape checked before anything is written; otherwise
every mismatch is printed and the exit status is 1. Tensors are streamed out of the zip one by one and written one
transformer block at a time, so peak memory is about one block plus the largest tensor, whatever the file size.
dtypes are kept (a bf16 file gives bf16 base weights); `.pt -> Orbax -> .pt` is bit-exact.
"""

from __future__ import annotations

import os
import resource
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from cosmos_jax.weights import keymap
from cosmos_jax.weights.pt import PtFormatError, PtIndex

BUFFERS = {e.path for e in keymap.ENTRIES if e.buffer}


def _tree_path(entry: keymap.Entry) -> tuple[str, ...]:
    return ("buffers" if entry.buffer else "params", *entry.path)


def check(index: PtIndex, our_shapes, num_blocks: int) -> list[str]:
    """Every key problem (missing / unexpected / mis-shaped), from the archive's index alone."""
    expected = {key: keymap.torch_shape(e, our_shapes[e.path]) for key, e, _ in keymap.expand(num_blocks)}
    problems = [f"unexpected key {k} {index.shape(k)}" for k in index.tensors
                if k not in expected and not k.endswith(keymap.EXTRA_STATE_SUFFIX)]
    problems += [f"unexpected non-tensor entry {k}" for k in index.other if not k.endswith(keymap.EXTRA_STATE_SUFFIX)]
    for k, want in expected.items():
        if k not in index.tensors:
            problems.append(f"missing key {k} (expected shape {want})")
        elif index.shape(k) != want:
            problems.append(f"shape mismatch {k}: got {index.shape(k)}, expected {want}")
    return problems


def convert(src: str, dst: str, config, overwrite: bool = False) -> dict:
    """Convert; raises keymap.StrictLoadError listing every problem. Returns a summary."""
    from cosmos_jax import base_weights
    from cosmos_jax.models import build

    t0 = time.time()
    if os.path.exists(os.path.join(dst, "meta.json")) and not overwrite:
        raise FileExistsError(f"{dst}: already holds a conversion; pass --overwrite to replace it")
    cfg = build.dit_config(config)
    shapes = build.flat_shapes(build.abstract(cfg))
    with PtIndex(src) as index:
        problems = check(index, shapes, cfg.num_blocks)
        if problems:
            raise keymap.StrictLoadError(src, problems)

        def read(key: str, entry: keymap.Entry):
            a = index.read(key)
            return a.T if entry.transpose else a

        rest = {_tree_path(e): read(e.torch_key, e) for e in keymap.HEAD + keymap.TAIL}
        dtypes = sorted({str(a.dtype) for a in rest.values()})
        blocks = ({_tree_path(e): read(e.torch_key.format(i=i), e) for e in keymap.BLOCK}
                  for i in range(cfg.num_blocks))
        base_weights.write(dst, rest, blocks, {"source": os.path.abspath(src), "dtypes": dtypes})
        used = [k for k in index.tensors if not k.endswith(keymap.EXTRA_STATE_SUFFIX)]
        values = sum(int(index.tensors[k].nbytes // index.tensors[k].dtype.itemsize) for k in used)
        skipped = len(index.tensors) - len(used) + len(index.other)
    return {"src": src, "dst": dst, "tensors": len(used), "values": values, "skipped_extra_state": skipped,
            "dtypes": dtypes,
            "seconds": round(time.time() - t0, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1)}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it does not include the parent's memory
    inherited across fork+exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv):
    del argv
    f = flags.FLAGS
    try:
        summary = convert(f.src, f.dst, f.config, f.overwrite)
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
