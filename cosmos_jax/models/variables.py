"""Flat views of an NNX model's variables and the one strict loader that fills them (DiT, tokenizer, T5).

Keys are path tuples (`dotted=False`, the DiT's `train_state.flat` layout) or dotted strings (`dotted=True`, the
tokenizer's and T5's `weights` layouts).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx


def flat_vars(model: nnx.Module, dotted: bool = False, exclude: tuple[type, ...] = ()) -> dict:
    """{path: Variable} of every variable of `model` (those of the `exclude` types left out). The Variables are the
    model's own: `set_value` on them writes into the model."""
    out = {}
    for p, v in nnx.to_flat_state(nnx.state(model)):
        if not isinstance(v, exclude):
            out[".".join(map(str, p)) if dotted else tuple(map(str, p))] = v
    return out


def fill(model: nnx.Module, arrays: Mapping, source: str, *, dotted: bool = False, dtype=None,
         exclude: tuple[type, ...] = ()) -> nnx.Module:
    """Write {path: array} into `model` in place; paths and shapes must match exactly, and every missing,
    unexpected or mis-shaped path is named in one ValueError (nothing is written then). Values take `dtype`, or the
    variable's own dtype when None."""
    flat = flat_vars(model, dotted, exclude)
    name = (lambda k: k) if dotted else (lambda k: "/".join(k))  # noqa: E731
    missing = sorted(name(k) for k in set(flat) - set(arrays))
    unexpected = sorted(name(k) for k in set(arrays) - set(flat))
    bad = [f"{name(k)}: {tuple(np.shape(arrays[k]))}, expected {tuple(v.get_value().shape)}" for k, v in flat.items()
           if k in arrays and tuple(np.shape(arrays[k])) != tuple(v.get_value().shape)]
    if missing or unexpected or bad:
        raise ValueError(f"{source}: does not match the model: missing {missing}, unexpected {unexpected}, "
                         f"mis-shaped {bad}")
    for k, v in flat.items():
        v.set_value(jnp.asarray(arrays[k], dtype=v.get_value().dtype if dtype is None else dtype))
    return model


def flatten_dotted(tree: Mapping, prefix: str = "") -> dict:
    """Nested mapping -> {"a.b.c": leaf}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
