"""Write upstream `.pt` state dicts from numpy and convert tensors dtype-exactly (bf16 included); reading is
converters/pt_reader.py (streaming, no torch). Imports torch lazily."""

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


def save_state_dict(state: Mapping[str, np.ndarray], path: str) -> None:
    """torch.save a {key: numpy} dict atomically (temporary file in the same folder, then rename)."""
    torch = _torch()
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save({k: numpy_to_tensor(v) for k, v in state.items()}, tmp)
    os.replace(tmp, path)
