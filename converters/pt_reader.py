"""Stream tensors out of a PyTorch checkpoint one at a time, without torch and without loading the file.

`torch.save` writes a zip archive: `<root>/data.pkl` (the pickled structure; tensors are references to storages)
and one member `<root>/data/<key>` of raw bytes per storage. `PtIndex` unpickles only the structure, with an
allow-list (a checkpoint cannot run code), and `read(key)` decodes one tensor's bytes on demand. Peak memory is the
largest tensor, not the file. Legacy (pre-1.6, non-zip) files are refused with a clear message.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import zipfile

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class PtFormatError(ValueError):
    """The file is not a readable PyTorch zip checkpoint; the message names it."""


@dataclasses.dataclass(frozen=True)
class StorageRef:
    key: str
    dtype: np.dtype
    numel: int


@dataclasses.dataclass(frozen=True)
class TensorRef:
    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.storage.dtype)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def _rebuild_tensor_v2(storage, offset, size, stride, *args):
    return TensorRef(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, *args):
    return data


class _StorageType:
    def __init__(self, name: str):
        self.dtype = _STORAGE_DTYPES[name]


class _IndexUnpickler(pickle.Unpickler):
    def __init__(self, f, path: str):
        super().__init__(f)
        self.path = path

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "builtins" and name in ("dict", "list", "tuple", "set", "int", "float", "str", "bool"):
            return super().find_class(module, name)
        raise PtFormatError(f"{self.path}: refused to unpickle {module}.{name}: only tensors and containers "
                            "are allowed in a weights file (nothing was executed)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise PtFormatError(f"{self.path}: unknown persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise PtFormatError(f"{self.path}: unsupported storage type {storage_type!r}")
        return StorageRef(str(key), storage_type.dtype, int(numel))


class PtIndex:
    """The tensors of a `.pt` state dict (flat, or wrapped as {"model": {...}}), readable one by one."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except FileNotFoundError:
            raise
        except (zipfile.BadZipFile, OSError) as e:
            raise PtFormatError(f"{path}: not a readable PyTorch zip checkpoint ({e}); a truncated download "
                                "or a legacy (pre-1.6) file? Re-download it, or re-save it with torch.save") from e
        names = self._zip.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise PtFormatError(f"{path}: no data.pkl in the archive (not a torch.save file)")
        self._root = pkl[0][: -len("data.pkl")]
        order = self._root + "byteorder"
        self._big_endian = order in names and self._zip.read(order).decode().strip() == "big"
        try:
            obj = _IndexUnpickler(io.BytesIO(self._zip.read(pkl[0])), path).load()
        except PtFormatError:
            raise
        except Exception as e:
            raise PtFormatError(f"{path}: cannot read its structure ({type(e).__name__}: {e})") from e
        if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
            obj = obj["model"]
        if not isinstance(obj, dict):
            raise PtFormatError(f"{path}: expected a state dict, found {type(obj).__name__}")
        self.tensors: dict[str, TensorRef] = {}
        self.other: dict[str, object] = {}
        for k, v in obj.items():
            (self.tensors if isinstance(v, TensorRef) else self.other)[str(k)] = v

    def shape(self, key: str) -> tuple[int, ...]:
        return self.tensors[key].shape

    def read(self, key: str) -> np.ndarray:
        """One tensor as a contiguous numpy array of its dtype (bf16 -> ml_dtypes.bfloat16)."""
        ref = self.tensors[key]
        member = f"{self._root}data/{ref.storage.key}"
        try:
            raw = self._zip.read(member)
        except (KeyError, zipfile.BadZipFile, OSError, EOFError) as e:
            raise PtFormatError(f"{self.path}: cannot read tensor {key} (storage {member}): {e}") from e
        dtype = np.dtype(ref.dtype).newbyteorder(">") if self._big_endian else np.dtype(ref.dtype)
        if len(raw) < ref.storage.numel * dtype.itemsize:
            raise PtFormatError(f"{self.path}: storage of {key} is truncated ({len(raw)} bytes, expected "
                                f"{ref.storage.numel * dtype.itemsize})")
        flat = np.frombuffer(raw, dtype=dtype, count=ref.storage.numel)
        strides = tuple(s * dtype.itemsize for s in ref.stride)
        view = np.lib.stride_tricks.as_strided(flat[ref.offset:], shape=ref.shape, strides=strides)
        return np.ascontiguousarray(view).astype(ref.dtype, copy=False)

    def close(self) -> None:
        self._zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
