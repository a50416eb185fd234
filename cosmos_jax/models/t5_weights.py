"""A converted T5 encoder on disk (written by `python -m converters.t5_to_orbax`), and the text encoder read from it.

    DIR/rest/           Orbax PyTree {"shared": {"embedding"}, "relative_attention_bias": {"embedding"},
                        "final_norm": {"scale"}}
    DIR/block_000/ ...  Orbax PyTree of encoder block i, paths relative to `blocks.{i}` of `t5.T5Encoder`
                        ({"attn_norm": {"scale"}, "attn": {"q": {"kernel"}, ...}, "ffn_norm": ..., "ffn": ...})
    DIR/spiece.model    the SentencePiece tokenizer (a copy of the source's)
    DIR/config.json     {"format", "t5_config" (our T5Config fields), "num_layers", "dtypes", "max_length", ...}:
                        written last, so its presence marks a complete conversion

One Orbax checkpoint per block keeps the conversion's memory at about one block (805 MB fp32 for t5-11b) however big
the model is. Dtypes are those written (fp32 for the release, bf16 with `--dtype bfloat16`); `load_converted` keeps
them (or casts to `param_dtype`), and the forward pass computes in `T5Config.dtype` (fp32).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import jax
import numpy as np
from flax import nnx

from cosmos_jax.models import t5
from cosmos_jax.weights import tree

FORMAT = "cosmos_jax.t5/1"
CONFIG = "config.json"
TOKENIZER = "spiece.model"
REST = "rest"


def block_dir(i: int) -> str:
    return f"block_{i:03d}"


def _save(path: str, flat: dict[str, np.ndarray]) -> None:
    import orbax.checkpoint as ocp

    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.abspath(path), tree.unflat(flat), force=True)
    ckptr.wait_until_finished()


def write(dst: str, cfg: t5.T5Config, rest: dict[str, np.ndarray], blocks: Iterable[dict[str, np.ndarray]],
          spiece: str, meta: dict) -> int:
    """Write a converted folder; `rest` and each item of `blocks` are {our dotted path: array} (block paths relative
    to `blocks.{i}`), consumed one block at a time. Returns the number of blocks written."""
    import shutil

    os.makedirs(dst, exist_ok=True)
    marker = os.path.join(dst, CONFIG)
    if os.path.exists(marker):
        os.remove(marker)  # an interrupted rewrite must not look complete
    shutil.copyfile(spiece, os.path.join(dst, TOKENIZER))
    _save(os.path.join(dst, REST), rest)
    dtypes = {str(a.dtype) for a in rest.values()}
    n = 0
    for i, block in enumerate(blocks):
        _save(os.path.join(dst, block_dir(i)), block)
        dtypes |= {str(a.dtype) for a in block.values()}
        n += 1
        del block  # hold one block at a time
    if n != cfg.num_layers:
        raise ValueError(f"{dst}: wrote {n} blocks, the config has num_layers={cfg.num_layers}")
    info = {"format": FORMAT, "t5_config": cfg.to_dict(), "num_layers": n, "dtypes": sorted(dtypes),
            "tokenizer": TOKENIZER, "max_length": 512, "pad_id": t5.PAD_ID, "eos_id": t5.EOS_ID, "unk_id": t5.UNK_ID,
            **meta}
    with open(marker + ".tmp", "w") as f:
        json.dump(info, f, indent=2)
    os.replace(marker + ".tmp", marker)
    return n


def read_meta(path: str) -> dict:
    """The folder's config.json, checked to be a complete conversion of this format."""
    marker = os.path.join(path, CONFIG)
    if not os.path.isfile(marker):
        raise FileNotFoundError(f"{path}: not a complete converted T5 folder (no {CONFIG}); convert with "
                                f"python -m converters.t5_to_orbax --src <google-t5/t5-11b folder> --dst {path}")
    with open(marker) as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{marker}: not valid JSON ({e})") from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"{marker}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def is_converted(path: str) -> bool:
    try:
        read_meta(path)
    except (FileNotFoundError, ValueError):
        return False
    return True


def _restore(path: str, want: dict[str, tuple[int, ...]], param_dtype, device) -> dict[str, jax.Array]:
    """{relative path: array} of one Orbax folder, strictly against `want` {relative path: shape}."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: missing (an incomplete converted T5 folder? convert again)")
    ckptr = ocp.StandardCheckpointer()
    md = ckptr.metadata(path)
    metadata = tree.flat(dict(getattr(md, "item_metadata", md)), dotted=True)
    stored = {k: (tuple(m.shape), m.dtype) for k, m in metadata.items()}
    missing, unexpected = sorted(set(want) - set(stored)), sorted(set(stored) - set(want))
    bad = [f"{k}: stored {stored[k][0]}, expected {want[k]}" for k in want if k in stored and stored[k][0] != want[k]]
    if missing or unexpected or bad:
        raise ValueError(f"{path}: does not match config.json's T5Config: missing {missing}, unexpected "
                         f"{unexpected}, mis-shaped {bad}")
    sharding = jax.sharding.SingleDeviceSharding(device)
    target = {k: jax.ShapeDtypeStruct(shape, param_dtype or dtype, sharding=sharding)
              for k, (shape, dtype) in stored.items()}
    return tree.flat(ckptr.restore(path, tree.unflat(target)), dotted=True)


def load_model(path: str, param_dtype=None, device=None) -> t5.T5Encoder:
    """The encoder of a converted folder on `device` (default: the first), parameters in their stored dtype (or
    `param_dtype`)."""
    meta = read_meta(path)
    cfg = t5.T5Config.from_dict(meta["t5_config"])
    device = device or jax.devices()[0]
    model = t5.abstract(cfg)
    state = nnx.state(model)
    flat = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(state)}
    shapes = {k: tuple(v.get_value().shape) for k, v in flat.items()}
    arrays = _restore(os.path.join(path, REST), {k: s for k, s in shapes.items() if not k.startswith("blocks.")},
                      param_dtype, device)
    for i in range(cfg.num_layers):
        pre = f"blocks.{i}."
        want = {k[len(pre):]: s for k, s in shapes.items() if k.startswith(pre)}
        arrays.update({pre + k: a for k, a in _restore(os.path.join(path, block_dir(i)), want, param_dtype,
                                                        device).items()})
    for k, v in flat.items():
        v.set_value(arrays[k])
    nnx.update(model, state)
    return model


class T5TextEncoder:
    """Upstream's caption embedding (docs/tokenizer-t5.md §5.4): `.embed(texts)` -> a float32 [L_i, D] per text.

    SentencePiece ids + `</s>` (id 1), no BOS, truncated to 512 tokens; every text padded to 512 (as upstream's
    `padding="max_length"`), run `batch_size` at a time; outputs past the real length zeroed, then trimmed to it.
    """

    def __init__(self, model: t5.T5Encoder, tokenizer, max_length: int = 512, batch_size: int = 8):
        self.model, self.tokenizer, self.max_length, self.batch_size = model, tokenizer, max_length, batch_size

    @property
    def embed_dim(self) -> int:
        return self.model.config.d_model

    def embed(self, texts: Sequence[str]) -> list[np.ndarray]:
        return t5.embed_texts(self.model, self.tokenizer, list(texts), max_length=self.max_length,
                              batch_size=self.batch_size, pad_to=self.max_length)


def load_converted(path: str, param_dtype=None, batch_size: int = 8) -> T5TextEncoder:
    """The text encoder of a folder written by `python -m converters.t5_to_orbax`."""
    import sentencepiece as spm

    meta = read_meta(path)
    spiece = os.path.join(path, meta.get("tokenizer", TOKENIZER))
    if not os.path.isfile(spiece):
        raise FileNotFoundError(f"{spiece}: missing (the converted folder's SentencePiece tokenizer)")
    tok = spm.SentencePieceProcessor(model_file=spiece)
    vocab = int(meta["t5_config"]["vocab_size"])
    if tok.get_piece_size() > vocab:
        raise ValueError(f"{spiece}: {tok.get_piece_size()} pieces, more than the encoder's vocab_size {vocab}")
    return T5TextEncoder(load_model(path, param_dtype), tok, int(meta.get("max_length", 512)), batch_size)
