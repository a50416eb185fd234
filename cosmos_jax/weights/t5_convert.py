"""Reading a Hugging Face T5 folder and converting it to the converted T5 folder (cosmos_jax/weights/t5.py); the
command is `python -m converters.t5_to_orbax` (docs/tokenizer-t5.md §5).

SRC must hold `config.json` (model_type "t5"), `spiece.model` and the weights, one of (first found wins):
    model.safetensors.index.json + shards, model.safetensors     read with the `safetensors` package, if installed
    pytorch_model.bin.index.json + shards, pytorch_model.bin     torch.save files, zip or legacy
Only `encoder.*` and `shared.weight` are read (`encoder.embed_tokens.weight` stands in for `shared.weight`, and must
equal it when both are present); `decoder.*` and `lm_head.*` are ignored. Any other key, a missing or mis-shaped
encoder tensor, or a non-float dtype is listed in one StrictLoadError (nothing is written).

Memory:
- zip `.bin` (torch >= 1.6) and safetensors: tensors are streamed one at a time (cosmos_jax/weights/pt.py, no torch
  needed for zip files) and written one encoder block at a time, so peak RAM does not grow with the file: measured
  ~3.4 blocks above the interpreter's ~210 MB for 0.6 and 1.2 GB files alike (t5-11b fp32, 805 MB a block:
  expect ~3 GB).
- legacy (pre-1.6, non-zip) `.bin`, probably what google-t5/t5-11b ships (2019): it cannot be read lazily, so it is
  loaded whole with `torch.load(weights_only=True, map_location="cpu")`. That needs RAM for the whole file, ~45 GB
  for t5-11b fp32 (encoder + decoder); the decoder tensors are dropped right after loading (the encoder is ~19.5 GB
  fp32). Convert on a machine with >= 64 GB of RAM, or re-save the file once in the zip format.
Dtypes are kept (fp32 for the release: 19.5 GB written); `--dtype bfloat16` halves the output.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from collections.abc import Callable

import ml_dtypes
import numpy as np

from cosmos_jax.models import t5
from cosmos_jax.utils import memory
from cosmos_jax.weights import t5 as t5_weights
from cosmos_jax.weights.keymap import StrictLoadError
from cosmos_jax.weights.pt import PtFormatError, PtIndex, import_torch, tensor_to_numpy

log = logging.getLogger(__name__)

HF_CONFIG_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                    "relative_attention_num_buckets", "relative_attention_max_distance", "feed_forward_proj",
                    "layer_norm_epsilon")
REQUIRED_FIELDS = HF_CONFIG_FIELDS[:6]
DTYPES = {"keep": None, "float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
FLOAT_DTYPES = {np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float64)}


def wanted(key: str) -> bool:
    """The keys the encoder port reads out of a full checkpoint."""
    return key.startswith("encoder.") or key == "shared.weight"


def read_hf_config(src: str) -> t5.T5Config:
    """Our T5Config from SRC/config.json: the encoder fields, HF's T5Config defaults for omitted optional ones."""
    path = os.path.join(src, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (expected the Hugging Face config.json of google-t5/t5-11b)")
    with open(path) as f:
        try:
            hf = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
    if hf.get("model_type") != "t5":
        raise ValueError(f"{path}: model_type {hf.get('model_type')!r}, expected 't5' (T5 v1.0/1.1 layout)")
    absent = [k for k in REQUIRED_FIELDS if k not in hf]
    if absent:
        raise ValueError(f"{path}: fields {absent} missing (expected {list(REQUIRED_FIELDS)})")
    cfg = t5.T5Config(**{k: hf[k] for k in HF_CONFIG_FIELDS if k in hf})
    try:
        if cfg.act_name not in ("relu", "gelu", "gelu_new", "silu", "swish"):
            raise ValueError(f"activation {cfg.act_name!r} is not supported")
    except ValueError as e:
        raise ValueError(f"{path}: feed_forward_proj {cfg.feed_forward_proj!r}: {e}") from e
    return cfg


# --------------------------------------------------------------------------------------------------------------------
# Weight files: {key: (shape, dtype)} up front, tensors read one at a time.

class _ZipBin:
    def __init__(self, path: str):
        self.index = PtIndex(path)
        self.entries = {k: (r.shape, r.dtype) for k, r in self.index.tensors.items()}
        self.other = sorted(self.index.other)

    def read(self, key: str) -> np.ndarray:
        return self.index.read(key)

    def close(self) -> None:
        self.index.close()


class _LegacyBin:
    """A pre-1.6 torch pickle: loaded whole by torch (RAM = the file size); unwanted tensors dropped at once."""

    def __init__(self, path: str):
        torch = import_torch()
        size = os.path.getsize(path)
        log.warning("%s: legacy (non-zip) torch file; torch.load reads all of it into RAM: %.1f GB "
                    "(~45 GB for t5-11b fp32)", path, size / 1e9)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise PtFormatError(f"{path}: neither a zip nor a readable legacy torch.save file ({type(e).__name__}: "
                                f"{e}); a truncated download? Re-download it") from e
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
            obj = obj["model"]
        if not isinstance(obj, dict):
            raise PtFormatError(f"{path}: expected a state dict, found {type(obj).__name__}")
        self.tensors, self.entries, self.other = {}, {}, []
        for k in list(obj):
            v = obj.pop(k)
            if not torch.is_tensor(v):
                self.other.append(str(k))
                continue
            self.entries[str(k)] = (tuple(v.shape), _torch_dtype(v.dtype))
            if wanted(str(k)) or k == "encoder.embed_tokens.weight":
                self.tensors[str(k)] = v
        del obj

    def read(self, key: str) -> np.ndarray:
        return tensor_to_numpy(self.tensors[key])

    def close(self) -> None:
        self.tensors.clear()


def _torch_dtype(dt) -> np.dtype:
    import torch

    if dt == torch.bfloat16:
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(torch.empty((), dtype=dt).numpy().dtype)


class _Safetensors:
    def __init__(self, path: str):
        from safetensors import safe_open

        try:
            import torch  # noqa: F401

            self.framework = "pt"  # numpy's framework cannot hold bf16
        except ImportError:
            self.framework = "np"
        self.f = safe_open(path, framework=self.framework)
        self.other = []
        self.entries = {}
        for k in self.f.keys():
            sl = self.f.get_slice(k)
            self.entries[k] = (tuple(sl.get_shape()), _st_dtype(sl.get_dtype()))

    def read(self, key: str) -> np.ndarray:
        t = self.f.get_tensor(key)
        return tensor_to_numpy(t) if self.framework == "pt" else np.asarray(t)

    def close(self) -> None:
        self.f = None


def _st_dtype(name: str) -> np.dtype | str:
    table = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64, "I64": np.int64,
             "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
    return np.dtype(table[name]) if name in table else name


def open_file(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (named by the checkpoint index)")
    if path.endswith(".safetensors"):
        return _Safetensors(path)
    if zipfile.is_zipfile(path):
        return _ZipBin(path)
    return _LegacyBin(path)


class Checkpoint:
    """The weight files of SRC behind one {key: (shape, dtype)} table; `problems` lists duplicate/non-tensor keys."""

    def __init__(self, src: str):
        self.files, self.problems = weight_files(src), []
        self.readers, self.entries, self.owner = [], {}, {}
        try:
            for path in self.files:
                r = open_file(path)
                self.readers.append(r)
                self.problems += [f"{path}: unexpected non-tensor entry {k}" for k in r.other]
                for k, v in r.entries.items():
                    if k in self.entries:
                        self.problems.append(f"{path}: key {k} also in {self.owner[k]}")
                    self.entries[k], self.owner[k] = v, path
        except BaseException:
            self.close()
            raise
        self._reader = {k: r for r in self.readers for k in r.entries}

    def read(self, key: str) -> np.ndarray:
        return self._reader[key].read(key)

    def close(self) -> None:
        for r in self.readers:
            r.close()


def weight_files(src: str) -> list[str]:
    """The weight files of SRC, by the first layout present (module docstring)."""
    try:
        import safetensors  # noqa: F401

        have_st = True
    except ImportError:
        have_st = False
    layouts = [("model.safetensors.index.json", "model.safetensors")] if have_st else []
    layouts.append(("pytorch_model.bin.index.json", "pytorch_model.bin"))
    for index, single in layouts:
        ipath = os.path.join(src, index)
        if os.path.isfile(ipath):
            with open(ipath) as f:
                try:
                    weight_map = json.load(f)["weight_map"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{ipath}: expected a JSON object with a 'weight_map' ({e})") from e
            return [os.path.join(src, name) for name in sorted(set(weight_map.values()))]
        if os.path.isfile(os.path.join(src, single)):
            return [os.path.join(src, single)]
    found = sorted(os.listdir(src))[:20] if os.path.isdir(src) else "no such folder"
    hint = "" if have_st or not os.path.isfile(os.path.join(src, "model.safetensors")) else \
        " (model.safetensors needs the safetensors package: pip install safetensors)"
    raise FileNotFoundError(f"{src}: no weights (expected pytorch_model.bin[.index.json] or model.safetensors"
                            f"[.index.json]; found {found}){hint}")


# --------------------------------------------------------------------------------------------------------------------
# Checking and writing

def plan(cfg: t5.T5Config, ckpt: Checkpoint) -> tuple[dict[str, tuple[str, str, bool]], list[str], int]:
    """({our path: (source key, HF table key, transpose)}, problems, ignored count), from the shapes alone."""
    shapes = t5_weights.shapes(cfg)
    table = t5_weights.hf_key_map(cfg)
    keys = ckpt.entries
    problems = list(ckpt.problems)
    ignored = {k for k in keys if k.startswith(t5_weights.FULL_CHECKPOINT_IGNORE)}
    problems += [f"{ckpt.owner[k]}: unexpected key {k} {keys[k][0]}" for k in keys
                 if k not in table and k not in t5_weights.HF_ALIASES and k not in ignored]
    out = {}
    for hf_key, (path, transpose) in table.items():
        want = shapes[path][::-1] if transpose else shapes[path]
        aliases = (a for a, t in t5_weights.HF_ALIASES.items() if t == hf_key and a in keys)
        src = hf_key if hf_key in keys else next(aliases, None)
        if src is None:
            problems.append(f"missing key {hf_key} (expected shape {want})")
            continue
        shape, dtype = keys[src]
        if shape != want:
            problems.append(f"{ckpt.owner[src]}: shape mismatch {src}: got {shape}, expected {want}")
        elif dtype not in FLOAT_DTYPES:
            problems.append(f"{ckpt.owner[src]}: {src} has dtype {dtype}, expected a float tensor")
        else:
            out[path] = (src, hf_key, transpose)
    for alias, target in t5_weights.HF_ALIASES.items():
        if alias in keys and target in keys and keys[alias][0] != keys[target][0]:
            problems.append(f"{alias} {keys[alias][0]} differs in shape from {target} {keys[target][0]} (tied)")
    return out, problems, len(ignored)


def convert(src: str, dst: str, dtype: str = "keep", overwrite: bool = False,
            progress: Callable[[str], None] | None = None) -> dict:
    """Convert SRC into DST; raises StrictLoadError listing every key problem. Returns a summary."""
    t0 = time.time()
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: expected one of {list(DTYPES)}")
    t5_weights.MARKER.refuse_overwrite(dst, overwrite)
    cfg = read_hf_config(src)
    log.info("config: %s", " ".join(f"{k}={v}" for k, v in cfg.to_dict().items()))
    spiece = os.path.join(src, "spiece.model")
    if not os.path.isfile(spiece):
        raise FileNotFoundError(f"{spiece}: missing (expected T5's SentencePiece model next to config.json)")
    import sentencepiece as spm

    pieces = spm.SentencePieceProcessor(model_file=spiece).get_piece_size()
    ckpt = Checkpoint(src)
    try:
        mapping, problems, ignored = plan(cfg, ckpt)
        if pieces > cfg.vocab_size:
            problems.append(f"{spiece}: {pieces} pieces, more than config.json's vocab_size {cfg.vocab_size}")
        for alias, target in t5_weights.HF_ALIASES.items():  # tied copies must be equal (132 MB each for t5-11b)
            if not problems and alias in ckpt.entries and target in ckpt.entries:
                if not np.array_equal(ckpt.read(alias), ckpt.read(target)):
                    problems.append(f"{alias} differs from {target} (they are tied)")
        if problems:
            raise StrictLoadError(src, problems)
        cast = DTYPES[dtype]

        def read(path: str) -> np.ndarray:
            key, _, transpose = mapping[path]
            a = ckpt.read(key)
            a = np.ascontiguousarray(a.T) if transpose else a
            return a.astype(cast, copy=False) if cast is not None else a

        def blocks():
            for i in range(cfg.num_layers):
                pre = f"blocks.{i}."
                yield {p[len(pre):]: read(p) for p in mapping if p.startswith(pre)}
                if progress:
                    progress(f"block {i + 1}/{cfg.num_layers}")

        rest = {p: read(p) for p in mapping if not p.startswith("blocks.")}
        n = t5_weights.write(dst, cfg, rest, blocks(), spiece,
                             {"source": os.path.abspath(src), "source_files": [os.path.basename(f) for f in ckpt.files],
                              "source_dtypes": sorted({str(d) for _, d in ckpt.entries.values()})})
    finally:
        ckpt.close()
    values = sum(int(np.prod(ckpt.entries[s][0])) for s, _, _ in mapping.values())
    return {"src": src, "dst": dst, "files": len(ckpt.files), "tensors": len(mapping), "values": values,
            "ignored": ignored, "blocks": n, "dtype": dtype, "seconds": round(time.time() - t0, 2),
            "peak_rss_mb": round(memory.peak_rss_mb(), 1)}
