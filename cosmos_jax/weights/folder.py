"""The converted DiT folder: the network that `checkpoint.load_path` and `generate` read, written one block at a time.

An Orbax folder written one transformer block at a time, so that converting a 7B `.pt` never holds more than one
block in memory:
    DIR/rest/          Orbax PyTree {"params": ..., "buffers": ...}: every non-block tensor
    DIR/block_000/ ... Orbax PyTree {"params": {"net": {"blocks": ...}}}: block i's slice of every stacked tensor
    DIR/meta.json      {"format", "num_blocks", "source", ...}: written last, so its presence marks a complete
                       conversion (cosmos_jax/weights/artifact.py)
Paths are the model's (cosmos_jax/models); `restore` assembles the canonical stacked tree directly on the devices,
one block at a time. The T5 folder (cosmos_jax/weights/t5.py) uses the same `save_tree` and `block_dir`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cosmos_jax.weights import artifact, tree

MARKER = artifact.DIT
BLOCKS = ("net", "blocks")
REST = "rest"


def block_dir(i: int) -> str:
    return f"block_{i:03d}"


def is_block(path: tuple[str, ...]) -> bool:
    """A ("params"|"buffers", ...) path of a stacked block tensor."""
    return path[1:3] == BLOCKS


def save_tree(path: str, nested: dict) -> None:
    """One Orbax PyTree folder, written synchronously (replaced if present)."""
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.abspath(path), nested, force=True)
    ckptr.wait_until_finished()


def write(dst: str, rest: dict[tuple[str, ...], np.ndarray], blocks: Iterable[dict[tuple[str, ...], np.ndarray]],
          meta: dict) -> None:
    """`rest`: {("params"|"buffers", ...path): array} of non-block tensors; `blocks`: per block, the same for the
    block's slices (paths with the "net/blocks" prefix, no layer axis). Consumed one block at a time."""
    MARKER.begin(dst)
    save_tree(os.path.join(dst, REST), tree.unflat(rest))
    n = 0
    for i, block in enumerate(blocks):
        save_tree(os.path.join(dst, block_dir(i)), tree.unflat(block))
        n += 1
    MARKER.finish(dst, {"num_blocks": n, **meta})


def read_meta(path: str) -> dict:
    return MARKER.read(path)


def _item_metadata(path: str) -> dict[tuple[str, ...], tuple[tuple[int, ...], str]]:
    md = tree.orbax_metadata(path, ocp.StandardCheckpointer())
    return {p: (tuple(m.shape), str(m.dtype)) for p, m in tree.flat(md).items()}


def flat_metadata(path: str) -> dict[tuple[str, ...], tuple[tuple[int, ...], str]]:
    """{("params"|"buffers", ...): (shape, dtype)} in the canonical stacked layout, read from metadata only."""
    meta = read_meta(path)
    out = _item_metadata(os.path.join(path, REST))
    n = meta["num_blocks"]
    if n:
        for p, (shape, dtype) in _item_metadata(os.path.join(path, block_dir(0))).items():
            out[p] = ((n, *shape), dtype)
    return out


def read_part(path: str, part: str) -> dict[tuple[str, ...], np.ndarray]:
    """{model path: host array} of one sub-folder (`REST` or `block_dir(i)`), in its stored dtypes."""
    restored = ocp.PyTreeCheckpointer().restore(os.path.abspath(os.path.join(path, part)))
    return {p[1:]: np.asarray(a) for p, a in tree.flat(restored).items()}


def restore(path: str, target: dict, shardings: dict) -> dict:
    """Restore onto `target` ({"params", "buffers"} of ShapeDtypeStructs) with `shardings`; dtypes are cast to
    the target's. Shapes must already have been checked (dit.load_into_state does)."""
    meta = read_meta(path)
    flat_t, flat_s = tree.flat(target), tree.flat(shardings)
    rest_keys = [p for p in flat_t if not is_block(p)]
    rest_target = tree.unflat({p: jax.ShapeDtypeStruct(flat_t[p].shape, flat_t[p].dtype, sharding=flat_s[p])
                               for p in rest_keys})
    out = tree.flat(ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join(path, REST)), rest_target))
    block_keys = [p for p in flat_t if is_block(p)]

    def piece_sharding(s: NamedSharding) -> NamedSharding:
        return NamedSharding(s.mesh, P(*tuple(s.spec)[1:]))

    stacked = {p: jax.jit(lambda shape=flat_t[p].shape, dtype=flat_t[p].dtype: jnp.zeros(shape, dtype),
                          out_shardings=flat_s[p])() for p in block_keys}
    set_block = jax.jit(lambda full, piece, i: jax.lax.dynamic_update_index_in_dim(full, piece.astype(full.dtype),
                                                                                   i, 0), donate_argnums=0)
    for i in range(meta["num_blocks"]):
        piece_target = tree.unflat({p: jax.ShapeDtypeStruct(flat_t[p].shape[1:], flat_t[p].dtype,
                                                            sharding=piece_sharding(flat_s[p])) for p in block_keys})
        pieces = tree.flat(ocp.StandardCheckpointer().restore(
            os.path.abspath(os.path.join(path, block_dir(i))), piece_target))
        for p in block_keys:
            stacked[p] = set_block(stacked[p], pieces[p], i)
    out.update(stacked)
    return tree.unflat(out)
