"""T5-embedding pickles, read safely and in every writer variant (docs/data-layout.md §2).

A pickle from a downloaded dataset can run code when loaded. `safe_load` admits only numpy arrays, numpy scalars and
dtypes, lists, tuples, dicts, sets and plain scalars: any other global is refused with an error naming the file,
before anything in it executes.

Writer variants accepted by `read_embedding`: a raw 2-D array [L, D]; a list/tuple whose element 0 is the array; a
leading batch dim [1, L, D]; float16/bfloat16 (cast to float32); the cosmos-curate dict with `prefix_embedding` or
`embedding`; file names `.pkl` or `.pickle`; prefix files `prefix_<view>` (what upstream's loader reads) or
`prefix_t5_embeddings_<view>` (what its docs name).
"""

from __future__ import annotations

import io
import os
import pickle

import numpy as np

# (module, name) pairs a numpy-array pickle needs; nothing here can execute code.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "list"), ("builtins", "tuple"), ("builtins", "dict"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "bytearray"), ("builtins", "complex"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # protocol-2 numpy pickles store the raw bytes through it
}
_ALLOWED_MODULE_PREFIXES = ("numpy.dtypes",)  # numpy 2 dtype classes (Float32DType, ...)


class UnsafePickleError(ValueError):
    """The pickle references a global outside the allow-list; it was not executed."""


class BadEmbeddingError(ValueError):
    """An embedding file that cannot be used (format, width); the message names the file."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, path: str):
        super().__init__(f)
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS or module.startswith(_ALLOWED_MODULE_PREFIXES):
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._path}: refused to load pickle: it references {module}.{name}; only numpy arrays, lists, "
            "tuples, dicts and scalars are allowed (nothing was executed)")

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self._path}: refused to load pickle with persistent ids")


def safe_load(path: str):
    """Unpickle `path` admitting only data (numpy arrays, containers, scalars)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return _RestrictedUnpickler(io.BytesIO(data), path).load()
    except UnsafePickleError:
        raise
    except Exception as e:
        raise BadEmbeddingError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from e


def _as_array(obj, path: str) -> np.ndarray:
    if isinstance(obj, dict):
        for key in ("prefix_embedding", "embedding", "t5_embedding"):
            if key in obj:
                return _as_array(obj[key], path)
        raise BadEmbeddingError(f"{path}: dict without an embedding (keys {sorted(obj)[:8]})")
    if isinstance(obj, (list, tuple)):
        if not obj:
            raise BadEmbeddingError(f"{path}: empty list, expected [array [L, D]]")
        return _as_array(obj[0], path)
    if not isinstance(obj, np.ndarray):
        raise BadEmbeddingError(f"{path}: expected an array [L, D] (or a list holding one), got {type(obj).__name__}")
    return obj


def read_embedding(path: str, width: int | None = None) -> np.ndarray:
    """A T5 embedding as float32 [L, D] from any writer variant; checks D when `width` is given."""
    arr = _as_array(safe_load(path), path)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise BadEmbeddingError(f"{path}: embedding has shape {arr.shape}, expected [L, D] (or [1, L, D])")
    if width is not None and arr.shape[1] != width:
        raise BadEmbeddingError(f"{path}: embedding width {arr.shape[1]}, expected {width} "
                                "(config.model.crossattn_emb_channels)")
    if arr.shape[0] == 0:
        raise BadEmbeddingError(f"{path}: embedding has no tokens")
    if not np.issubdtype(arr.dtype, np.floating) and arr.dtype.name != "bfloat16":
        raise BadEmbeddingError(f"{path}: embedding dtype {arr.dtype}, expected a float type")
    return np.asarray(arr, dtype=np.float32)


def find_existing(candidates: list[str]) -> str | None:
    for c in candidates:
        if os.path.isfile(c):
            return c
    return None


def prefix_candidates(dataset_dir: str, view: str) -> list[str]:
    """Prefix file names in circulation, the loader's name first."""
    cache = os.path.join(dataset_dir, "cache")
    return [os.path.join(cache, f"{stem}{ext}") for stem in (f"prefix_{view}", f"prefix_t5_embeddings_{view}")
            for ext in (".pkl", ".pickle")]


def caption_candidates(dataset_dir: str, view: str, clip_stem: str) -> list[str]:
    base = os.path.join(dataset_dir, "t5_xxl", view, clip_stem)
    return [base + ".pkl", base + ".pickle"]


def dump(path: str, obj, protocol: int = 4) -> None:
    """Pickle `obj` to `path` atomically (temporary file in the same folder, then rename), creating the folder."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    os.replace(tmp, path)


def pad_tokens(emb_LD: np.ndarray, length: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad or truncate to `length` tokens; returns (embedding [length, D], mask [length])."""
    n = min(emb_LD.shape[0], length)
    out = np.zeros((length, emb_LD.shape[1]), np.float32)
    out[:n] = emb_LD[:n]
    mask = np.zeros((length,), np.float32)
    mask[:n] = 1.0
    return out, mask
