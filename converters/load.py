"""Load an upstream `.pt` into our network strictly, through the key map (the converters' shared path)."""

from __future__ import annotations

import numpy as np

from cosmos_jax.models import build
from cosmos_jax.weights import keymap, pt
from cosmos_jax.weights.pt import PtFormatError, PtIndex


def pt_to_tree(path: str, model) -> dict[tuple[str, ...], np.ndarray]:
    """{our path: numpy} from an upstream checkpoint, checked against `model`'s (possibly abstract) shapes. Read
    with the converters' streaming reader (no torch; the same one `dit_to_orbax` uses)."""
    with PtIndex(path) as index:
        bad = [k for k in index.other if not k.endswith(keymap.EXTRA_STATE_SUFFIX)]
        if bad:
            raise PtFormatError(f"{path}: entries that are not tensors: {bad[:5]}")
        arrays = {k: index.read(k) for k in index.tensors if not k.endswith(keymap.EXTRA_STATE_SUFFIX)}
    return keymap.from_torch(arrays, build.flat_shapes(model), model.net.cfg.num_blocks, source=path)


def load_pt_into(model, path: str) -> None:
    """Overwrite every parameter and buffer of `model` from the `.pt` at `path` (strict; cast to fp32)."""
    build.load_flat(model, pt_to_tree(path, model))


def tree_to_pt(tree: dict[tuple[str, ...], np.ndarray], num_blocks: int, path: str, dtype=None) -> None:
    """Write {our path: array} as an upstream `.pt` (optionally cast to dtype, e.g. bf16 for the reg export)."""
    state = keymap.to_torch(tree, num_blocks)
    if dtype is not None:
        state = {k: v.astype(dtype) for k, v in state.items()}
    pt.save_state_dict(state, path)
