"""One flatten/unflatten of weight trees, and the flat views of an NNX model's variables.

A weight tree is a nested dict (`nnx.to_pure_dict`, an Orbax PyTree, a train state). Flat, it is {path: leaf} with
tuple paths (`("net", "blocks", "fa", "attn", "to_q", "kernel")`: the DiT's layout, cosmos_jax/weights/keymap.py) or
dotted strings (`"blocks.0.attn.q.kernel"`: the tokenizer's and T5's layouts). `fill` is the one strict loader that
writes a flat tree into a model (DiT, tokenizer, T5).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def flat(tree, dotted: bool = False) -> dict:
    """Nested dict -> {path tuple: leaf}, or {"a.b.c": leaf} when `dotted`."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        out[".".join(keys) if dotted else keys] = leaf
    return out


def orbax_metadata(path: str, checkpointer=None) -> dict:
    """The nested metadata tree (leaves with .shape and .dtype) of an Orbax PyTree at `path`, read without the
    arrays; newer Orbax wraps it in a `StepMetadata` (`.item_metadata`), older returns the tree itself."""
    import orbax.checkpoint as ocp

    md = (checkpointer or ocp.PyTreeCheckpointer()).metadata(os.path.abspath(path))
    return dict(getattr(md, "item_metadata", md))


def unflat(flat_tree: Mapping[Any, Any]) -> dict:
    """{path tuple or "a.b.c": leaf} -> nested dict (a dotted key is split at its dots)."""
    out: dict = {}
    for path, leaf in flat_tree.items():
        *parents, last = path.split(".") if isinstance(path, str) else path
        node = out
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = leaf
    return out


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
    variables = flat_vars(model, dotted, exclude)
    name = (lambda k: k) if dotted else (lambda k: "/".join(k))  # noqa: E731
    missing = sorted(name(k) for k in set(variables) - set(arrays))
    unexpected = sorted(name(k) for k in set(arrays) - set(variables))
    bad = [f"{name(k)}: {tuple(np.shape(arrays[k]))}, expected {tuple(v.get_value().shape)}"
           for k, v in variables.items() if k in arrays and tuple(np.shape(arrays[k])) != tuple(v.get_value().shape)]
    if missing or unexpected or bad:
        raise ValueError(f"{source}: does not match the model: missing {missing}, unexpected {unexpected}, "
                         f"mis-shaped {bad}")
    for k, v in variables.items():
        v.set_value(jnp.asarray(arrays[k], dtype=v.get_value().dtype if dtype is None else dtype))
    return model
