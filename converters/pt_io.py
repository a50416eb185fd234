"""Read and write upstream `.pt` state dicts as numpy, dtype-exact (bf16 included). Imports torch lazily."""

from __future__ import annotations

import os
from collections.abc import Mapping

import ml_dtypes
import numpy as np


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading/writing .pt files needs torch: pip install 'cosmos_jax[convert]'") from e
    return torch


def tensor_to_numpy(t) -> np.ndarray:
    """A torch tensor as a numpy array of the same dtype and bits (bf16 -> ml_dtypes.bfloat16)."""
    torch = _torch()
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def numpy_to_tensor(a: np.ndarray):
    torch = _torch()
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:
        a = a.copy()
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def load_state_dict(path: str, mmap: bool = True) -> dict:
    """The flat state dict of an upstream checkpoint as {key: torch.Tensor}; accepts a `{"model": ...}` wrapper.

    `weights_only=True`: a checkpoint cannot run code. With mmap the tensors stay on disk until read.
    """
    torch = _torch()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict (mapping of key -> tensor), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor) and not k.endswith("_extra_state")]
    if bad:
        raise ValueError(f"{path}: entries that are not tensors: {bad[:5]}")
    return dict(obj)


def save_state_dict(state: Mapping[str, np.ndarray], path: str) -> None:
    """torch.save a {key: numpy} dict atomically (temporary file in the same folder, then rename)."""
    torch = _torch()
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save({k: numpy_to_tensor(v) for k, v in state.items()}, tmp)
    os.replace(tmp, path)
