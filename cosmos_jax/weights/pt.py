"""Upstream `.pt` files, read and written one tensor at a time.

Reading (`PtIndex`, no torch): `torch.save` writes a zip archive, `<root>/data.pkl` (the pickled structure; tensors
are references to storages) and one member `<root>/data/<key>` of raw bytes per storage. `PtIndex` unpickles only the
structure, with an allow-list (a checkpoint cannot run code), and `read(key)` decodes one tensor's bytes on demand:
peak memory is the largest tensor, not the file. Legacy (pre-1.6, non-zip) files are refused with a clear message.

Writing (`PtWriter`, no torch): a flat state dict streamed to a torch.save-compatible file one tensor at a time.
`save_state_dict`, `tensor_to_numpy` and `numpy_to_tensor` go through torch (imported lazily) and convert tensors
dtype-exactly, bf16 included.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import os
import pickle
import struct
import sys
import zipfile
import zlib
from collections.abc import Mapping, Sequence

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


# ---- torch-side helpers (torch imported lazily) ----------------------------------------------------------------------

def import_torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading/writing .pt files needs torch: pip install 'cosmos_jax[convert]'") from e
    return torch


def tensor_to_numpy(t) -> np.ndarray:
    """A torch tensor as a numpy array of the same dtype and bits (bf16 -> ml_dtypes.bfloat16)."""
    torch = import_torch()
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def numpy_to_tensor(a: np.ndarray):
    torch = import_torch()
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:
        a = a.copy()
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def save_state_dict(state: Mapping[str, np.ndarray], path: str) -> None:
    """torch.save a {key: numpy} dict atomically (temporary file in the same folder, then rename)."""
    torch = import_torch()
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save({k: numpy_to_tensor(v) for k, v in state.items()}, tmp)
    os.replace(tmp, path)


# ---- streaming writer (no torch) -------------------------------------------------------------------------------------

_ALIGN = 64  # torch's storage alignment: every record's data starts on a 64-byte boundary (mmap=True loads)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class _Global:
    """Pickled as `GLOBAL module name` without importing it (torch need not be installed)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # the pickler wants the reduce function to be callable
        raise TypeError(f"{self.module}.{self.name} is a pickle reference only")


class _Storage:
    def __init__(self, storage_type: _Global, key: str, numel: int):
        self.type, self.key, self.numel = storage_type, key, numel


class _Tensor:
    """Reduces exactly like a contiguous CPU torch.Tensor: `_rebuild_tensor_v2(storage, 0, size, stride, False,
    OrderedDict())`."""

    def __init__(self, storage: _Storage, shape: tuple[int, ...]):
        self.storage, self.shape = storage, shape
        stride, acc = [], 1
        for s in reversed(shape):
            stride.append(acc)
            acc *= s
        self.stride = tuple(reversed(stride))

    def __reduce_ex__(self, protocol):
        return _REBUILD, (self.storage, 0, self.shape, self.stride, False, collections.OrderedDict())


_REBUILD = _Global("torch._utils", "_rebuild_tensor_v2")
_STORAGE_NAMES = {np.dtype(d): name for name, d in _STORAGE_DTYPES.items()}
_STORAGE_TYPES = {d: _Global("torch", n) for d, n in _STORAGE_NAMES.items()}
_STORAGE, _CPU = "storage", "cpu"  # one object each, so that the pickle memoizes them as torch's does


class _Pickler(pickle._Pickler):  # the pure-Python pickler: `dispatch` can be extended; output as the C one
    dispatch = dict(pickle._Pickler.dispatch)

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return (_STORAGE, obj.type, obj.key, _CPU, obj.numel)
        return None

    def _save_global_ref(self, obj: _Global):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[_Global] = _save_global_ref


def state_dict_pickle(entries: Sequence[tuple[str, tuple[int, ...], np.dtype]]) -> bytes:
    """`data.pkl` of torch.save({key: contiguous tensor}) (protocol 2; storages "0", "1", ... in order)."""
    obj = {}
    for n, (key, shape, dtype) in enumerate(entries):
        shape = tuple(int(s) for s in shape)
        numel = int(np.prod(shape, dtype=np.int64))
        obj[key] = _Tensor(_Storage(_STORAGE_TYPES[np.dtype(dtype)], str(n), numel), shape)
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def pt_nbytes(entries: Sequence[tuple[str, tuple[int, ...], np.dtype]], name_len: int = 255) -> int:
    """An upper bound, a few hundred bytes a tensor above, of the size of PtWriter's file for these entries (for a
    free-space check); `name_len` bounds the length of the file's base name."""
    data = sum(int(np.prod(s, dtype=np.int64)) * np.dtype(d).itemsize for _, s, d in entries)
    small = len(state_dict_pickle(entries)) + 1 + len(str(_ALIGN)) + len("little") + 2 + 40
    records = len(entries) + 6
    # per record: local header 30 + name + padding field <= 4 + 63 (+ zip64 20); central directory entry
    # 46 + name + padding field + zip64 28; names are "<base>/data/<n>"; end records 98
    per = 30 + 67 + 20 + 46 + 67 + 28 + 2 * (name_len + 32)
    return data + small + records * per + 98


class PtWriter:
    """Stream a flat state dict to a torch.save-compatible zip file, one tensor at a time, without torch.

    `entries` (key, shape, dtype) are declared up front (the pickled structure is written first, as torch does),
    then `add(key, array)` must be called for each in order; each tensor's bytes are stored uncompressed at a
    64-byte aligned offset, so `torch.load(path, weights_only=True)` and `torch.load(..., mmap=True)` read it, and
    so does `PtIndex`. The file is written to `path + ".tmp-<pid>"`; `close()` (or leaving the
    `with` block normally) renames it to `path`; an error (or `abort()`) removes it. Records as torch 2.x writes
    them: data.pkl, .format_version, .storage_alignment, byteorder, data/0..N-1, version,
    .data/serialization_id."""

    def __init__(self, path: str, entries: Sequence[tuple[str, tuple[int, ...], np.dtype]]):
        if sys.byteorder != "little":
            raise RuntimeError("PtWriter writes little-endian files on little-endian hosts only")
        self.path = path
        self.tmp = f"{path}.tmp-{os.getpid()}"
        self.entries = [(str(k), tuple(int(s) for s in shape), np.dtype(d)) for k, shape, d in entries]
        self._root = os.path.basename(path)  # torch.save names the archive folder after the file
        self._next = 0
        self._crc = 0
        self._zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        try:
            self._record("data.pkl", state_dict_pickle(self.entries))
            self._record(".format_version", b"1")
            self._record(".storage_alignment", str(_ALIGN).encode())
            self._record("byteorder", b"little")
        except BaseException:
            self.abort()
            raise

    def _open(self, name: str, size: int):
        zinfo = zipfile.ZipInfo(f"{self._root}/{name}", date_time=_ZIP_TIME)
        zinfo.compress_type = zipfile.ZIP_STORED
        zinfo.file_size = size
        header = self._zip.fp.tell() + 30 + len(zinfo.filename.encode("utf-8"))  # local header: 30 + name + extra
        pad = (-(header + 4)) % _ALIGN
        zinfo.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad  # torch's padding field
        return self._zip.open(zinfo, "w")

    def _record(self, name: str, data: bytes) -> None:
        with self._open(name, len(data)) as f:
            f.write(data)
        self._crc = zlib.crc32(data, self._crc)

    def add(self, key: str, array: np.ndarray) -> None:
        """Write the next declared tensor (same key, shape and dtype; any memory layout)."""
        if self._next >= len(self.entries):
            raise ValueError(f"{self.path}: {key}: all {len(self.entries)} declared tensors are already written")
        want_key, want_shape, want_dtype = self.entries[self._next]
        a = np.asarray(array)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        if key != want_key or tuple(a.shape) != want_shape or a.dtype != want_dtype:
            raise ValueError(f"{self.path}: tensor {self._next} should be {want_key} {want_shape} {want_dtype}, "
                             f"got {key} {tuple(a.shape)} {a.dtype}")
        a = np.ascontiguousarray(a)
        raw = memoryview(a.reshape(-1).view(np.uint8))
        with self._open(f"data/{self._next}", raw.nbytes) as f:
            f.write(raw)
        self._next += 1

    def finish(self) -> None:
        """Write the closing records and the zip directory (the file stays under its temporary name)."""
        if self._next != len(self.entries):
            missing = [k for k, _, _ in self.entries[self._next:]]
            raise ValueError(f"{self.path}: {len(missing)} declared tensor(s) not written, e.g. {missing[:3]}")
        self._record("version", b"3\n")
        serial = f"{self._crc:020d}{int.from_bytes(os.urandom(8), 'little'):020d}"  # 40 digits, as torch
        self._record(".data/serialization_id", serial.encode())
        self._zip.close()

    def commit(self) -> str:
        os.replace(self.tmp, self.path)
        return self.path

    def close(self) -> str:
        try:
            self.finish()
        except BaseException:
            self.abort()
            raise
        return self.commit()

    def abort(self) -> None:
        """Drop the temporary file (nothing is left under `path`)."""
        zf = getattr(self, "_zip", None)
        try:
            if zf is not None and zf.fp is not None:
                try:
                    zf.close()
                except Exception:  # e.g. a write handle left open, or the disk full: just close the file
                    if zf.fp is not None:
                        zf.fp.close()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
