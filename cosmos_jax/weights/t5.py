"""T5 encoder weights in every outside form, and the one text encoder that embeds captions with them.

- HF state dicts: `HF_KEYS` is the one table between HF keys and our parameter paths (cosmos_jax/models/t5.py);
  `from_hf_state_dict` fills a model (real or abstract) through it, strictly. Reading HF's files is t5_convert.py.
- The converted folder (written by `python -m converters.t5_to_orbax`; docs/tokenizer-t5.md §5):
      DIR/rest/           Orbax PyTree {"shared": {"embedding"}, "relative_attention_bias": {"embedding"},
                          "final_norm": {"scale"}}
      DIR/block_000/ ...  Orbax PyTree of encoder block i, paths relative to `blocks.{i}` of `t5.T5Encoder`
                          ({"attn_norm": {"scale"}, "attn": {"q": {"kernel"}, ...}, "ffn_norm": ..., "ffn": ...})
      DIR/spiece.model    the SentencePiece tokenizer (a copy of the source's)
      DIR/config.json     {"format", "t5_config" (our T5Config fields), "num_layers", "dtypes", "max_length", ...}:
                          written last, so its presence marks a complete conversion (artifact.py)
  One Orbax checkpoint per block keeps the conversion's memory at about one block (805 MB fp32 for t5-11b) however
  big the model is. Dtypes are those written (fp32 for the release, bf16 with `--dtype bfloat16`); `load_converted`
  keeps them (or casts to `param_dtype`), and the forward pass computes in `T5Config.dtype` (fp32).
- The synthetic rig's tiny T5 (cosmos_jax/data/synthetic.py): `spiece.model`, `config.json` {"t5_config",
  "embed_dim", "projection", ...}, `weights.npz` ({our dotted path: array}) and an optional fixed projection
  `proj.npy` [d_model, embed_dim].
`load_encoder(path)` recognises either folder and returns a `TextEncoder`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from cosmos_jax.models import t5
from cosmos_jax.weights import artifact, folder, tree

MARKER = artifact.T5
TOKENIZER = "spiece.model"
WEIGHTS_NPZ = "weights.npz"

# --------------------------------------------------------------------------------------------------------------------
# HF key table. One row per HF tensor: (HF key pattern, our dotted path pattern, transpose). "{i}" = block index.
# HF Linear.weight [out, in] is our Dense kernel [in, out] (transpose); embeddings and norm weights keep their layout.

HF_KEYS: tuple[tuple[str, str, bool], ...] = (
    ("shared.weight", "shared.embedding", False),
    ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "relative_attention_bias.embedding",
     False),
    ("encoder.block.{i}.layer.0.layer_norm.weight", "blocks.{i}.attn_norm.scale", False),
    ("encoder.block.{i}.layer.0.SelfAttention.q.weight", "blocks.{i}.attn.q.kernel", True),
    ("encoder.block.{i}.layer.0.SelfAttention.k.weight", "blocks.{i}.attn.k.kernel", True),
    ("encoder.block.{i}.layer.0.SelfAttention.v.weight", "blocks.{i}.attn.v.kernel", True),
    ("encoder.block.{i}.layer.0.SelfAttention.o.weight", "blocks.{i}.attn.o.kernel", True),
    ("encoder.block.{i}.layer.1.layer_norm.weight", "blocks.{i}.ffn_norm.scale", False),
    ("encoder.block.{i}.layer.1.DenseReluDense.wi.weight", "blocks.{i}.ffn.wi.kernel", True),  # non-gated only
    ("encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight", "blocks.{i}.ffn.wi_0.kernel", True),  # gated only
    ("encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight", "blocks.{i}.ffn.wi_1.kernel", True),  # gated only
    ("encoder.block.{i}.layer.1.DenseReluDense.wo.weight", "blocks.{i}.ffn.wo.kernel", True),
    ("encoder.final_layer_norm.weight", "final_norm.scale", False),
)
# `encoder.embed_tokens.weight` is the same tensor as `shared.weight` (tied); either may stand for it.
HF_ALIASES = {"encoder.embed_tokens.weight": "shared.weight"}
# Pass as `ignore_prefixes` to load the encoder out of a full T5ForConditionalGeneration checkpoint.
FULL_CHECKPOINT_IGNORE = ("decoder.", "lm_head.")


def hf_key_map(cfg: t5.T5Config) -> dict[str, tuple[str, bool]]:
    """{HF key: (our dotted path, transpose)} for this config, in HF state-dict order."""
    out: dict[str, tuple[str, bool]] = {}
    gated_only = ("wi_0", "wi_1")
    for hf, ours, tr in HF_KEYS:
        if (".wi." in hf and cfg.is_gated) or (any(f".{g}." in hf for g in gated_only) and not cfg.is_gated):
            continue
        if "{i}" in hf:
            for i in range(cfg.num_layers):
                out[hf.format(i=i)] = (ours.format(i=i), tr)
        else:
            out[hf] = (ours, tr)
    return out


def shapes(cfg: t5.T5Config) -> dict[str, tuple[int, ...]]:
    """{our dotted path: shape} of the encoder of `cfg`, computed abstractly."""
    return {k: tuple(v.get_value().shape) for k, v in tree.flat_vars(t5.abstract(cfg), dotted=True).items()}


def state_dict(model: t5.T5Encoder) -> dict[str, np.ndarray]:
    """{our dotted path: numpy array} (the layout of `weights.npz` files)."""
    return {k: np.asarray(jax.device_get(v.get_value())) for k, v in tree.flat_vars(model, dotted=True).items()}


def load_state_dict(model: t5.T5Encoder, arrays: Mapping[str, np.ndarray]) -> t5.T5Encoder:
    """Fill the model in place from {our dotted path: array}; paths and shapes must match exactly."""
    return tree.fill(model, arrays, "T5 state dict", dotted=True, dtype=jnp.float32)


def random_state_dict(cfg: t5.T5Config, seed: int = 0) -> dict[str, np.ndarray]:
    """HF's init distributions drawn with numpy (fast, no compilation; stable across JAX versions), by our paths.

    Fill a model with `load_state_dict(t5.abstract(cfg), random_state_dict(cfg, seed))`.
    """
    rng = np.random.default_rng(seed)
    D, inner = cfg.d_model, cfg.num_heads * cfg.d_kv
    stds = {"q": (D * cfg.d_kv) ** -0.5, "k": D ** -0.5, "v": D ** -0.5, "o": inner ** -0.5,
            "wi": D ** -0.5, "wi_0": D ** -0.5, "wi_1": D ** -0.5, "wo": cfg.d_ff ** -0.5}
    out = {}
    for path, shape in shapes(cfg).items():
        leaf = path.split(".")
        if leaf[-1] == "scale":
            out[path] = np.ones(shape, np.float32)
            continue
        std = 1.0 if leaf[0] == "shared" else D ** -0.5 if leaf[0] == "relative_attention_bias" else stds[leaf[-2]]
        out[path] = (rng.standard_normal(shape) * std).astype(np.float32)
    return out


def from_hf_state_dict(model: t5.T5Encoder, hf_state: Mapping[str, np.ndarray], *,
                       ignore_prefixes: Sequence[str] = ()) -> t5.T5Encoder:
    """Fill `model` (real or `abstract`) in place from an HF T5 state dict of numpy arrays; returns it.

    Strict: keys the table does not expect, table keys that are absent, and tensors of the wrong shape raise one
    ValueError listing all of them. Keys starting with any of `ignore_prefixes` are skipped (e.g.
    `FULL_CHECKPOINT_IGNORE` for a full encoder-decoder file). `encoder.embed_tokens.weight` may stand in for
    `shared.weight`; if both are present they must be equal.
    """
    table = hf_key_map(model.config)
    state = {k: v for k, v in hf_state.items() if not any(k.startswith(p) for p in ignore_prefixes)}
    problems: list[str] = []
    for alias, target in HF_ALIASES.items():
        if alias in state:
            a = np.asarray(state.pop(alias))
            if target not in state:
                state[target] = a
            elif np.shape(state[target]) != a.shape or not np.array_equal(np.asarray(state[target]), a):
                problems.append(f"{alias} differs from {target} (they are tied)")
    missing = [k for k in table if k not in state]
    unexpected = [k for k in state if k not in table]
    ours: dict[str, np.ndarray] = {}
    variables = tree.flat_vars(model, dotted=True)
    mis_shaped = []
    for k, (path, transpose) in table.items():
        if k not in state:
            continue
        a = np.asarray(state[k], dtype=np.float32)
        a = a.T if transpose else a
        want = tuple(variables[path].get_value().shape)
        if a.shape != want:
            mis_shaped.append(f"{k}: {tuple(np.shape(state[k]))} (ours {path} {want}, transpose={transpose})")
        ours[path] = a
    if missing or unexpected or mis_shaped or problems:
        raise ValueError("HF T5 state dict does not match the model: "
                         f"missing {missing}; unexpected {unexpected}; mis-shaped {mis_shaped}; other {problems}")
    return load_state_dict(model, ours)


# --------------------------------------------------------------------------------------------------------------------
# The converted folder

def write(dst: str, cfg: t5.T5Config, rest: dict[str, np.ndarray], blocks: Iterable[dict[str, np.ndarray]],
          spiece: str, meta: dict) -> int:
    """Write a converted folder; `rest` and each item of `blocks` are {our dotted path: array} (block paths relative
    to `blocks.{i}`), consumed one block at a time. Returns the number of blocks written."""
    MARKER.begin(dst)
    shutil.copyfile(spiece, os.path.join(dst, TOKENIZER))
    folder.save_tree(os.path.join(dst, folder.REST), tree.unflat(rest))
    dtypes = {str(a.dtype) for a in rest.values()}
    n = 0
    for i, block in enumerate(blocks):
        folder.save_tree(os.path.join(dst, folder.block_dir(i)), tree.unflat(block))
        dtypes |= {str(a.dtype) for a in block.values()}
        n += 1
        del block  # hold one block at a time
    if n != cfg.num_layers:
        raise ValueError(f"{dst}: wrote {n} blocks, the config has num_layers={cfg.num_layers}")
    MARKER.finish(dst, {"t5_config": cfg.to_dict(), "num_layers": n, "dtypes": sorted(dtypes), "tokenizer": TOKENIZER,
                        "max_length": 512, "pad_id": t5.PAD_ID, "eos_id": t5.EOS_ID, "unk_id": t5.UNK_ID, **meta})
    return n


def read_meta(path: str) -> dict:
    """The folder's config.json, checked to be a complete conversion of this format."""
    return MARKER.read(path)


def _restore(path: str, want: dict[str, tuple[int, ...]], param_dtype, device) -> dict[str, jax.Array]:
    """{relative path: array} of one Orbax folder, strictly against `want` {relative path: shape}."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: missing (an incomplete converted T5 folder? convert again)")
    ckptr = ocp.StandardCheckpointer()
    metadata = tree.flat(tree.orbax_metadata(path, ckptr), dotted=True)
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
    cfg = t5.T5Config.from_dict(read_meta(path)["t5_config"])
    device = device or jax.devices()[0]
    model = t5.abstract(cfg)
    state = nnx.state(model)
    variables = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(state)}
    want = {k: tuple(v.get_value().shape) for k, v in variables.items()}
    arrays = _restore(os.path.join(path, folder.REST), {k: s for k, s in want.items() if not k.startswith("blocks.")},
                      param_dtype, device)
    for i in range(cfg.num_layers):
        pre = f"blocks.{i}."
        block = {k[len(pre):]: s for k, s in want.items() if k.startswith(pre)}
        arrays.update({pre + k: a for k, a in _restore(os.path.join(path, folder.block_dir(i)), block, param_dtype,
                                                        device).items()})
    for k, v in variables.items():
        v.set_value(arrays[k])
    nnx.update(model, state)
    return model


# --------------------------------------------------------------------------------------------------------------------
# The text encoder

class TextEncoder:
    """Upstream's caption embedding (docs/tokenizer-t5.md §5.4): `.embed(texts)` -> a float32 [L_i, D] per text.

    SentencePiece ids + `</s>` (id 1), no BOS, truncated to 512 tokens; every text padded to 512 (as upstream's
    `padding="max_length"`), run `batch_size` at a time; outputs past the real length zeroed, then trimmed to it.
    `proj` [d_model, D] (the synthetic rig's tiny T5 only) multiplies the outputs, in fp64.
    """

    def __init__(self, model: t5.T5Encoder, tokenizer, max_length: int = 512, batch_size: int = 8,
                 proj: np.ndarray | None = None):
        self.model, self.tokenizer, self.max_length, self.batch_size = model, tokenizer, max_length, batch_size
        self.proj = proj

    @property
    def embed_dim(self) -> int:
        return int(self.proj.shape[1]) if self.proj is not None else self.model.config.d_model

    def embed(self, texts: Sequence[str]) -> list[np.ndarray]:
        out = t5.embed_texts(self.model, self.tokenizer, list(texts), max_length=self.max_length,
                             batch_size=self.batch_size, pad_to=self.max_length)
        if self.proj is not None:
            out = [np.ascontiguousarray((e.astype(np.float64) @ self.proj).astype(np.float32)) for e in out]
        return out


def _sentencepiece(path: str):
    import sentencepiece as spm

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (the text encoder folder's SentencePiece tokenizer)")
    return spm.SentencePieceProcessor(model_file=path)


def load_converted(path: str, param_dtype=None, batch_size: int = 8) -> TextEncoder:
    """The text encoder of a folder written by `python -m converters.t5_to_orbax`."""
    meta = read_meta(path)
    spiece = os.path.join(path, meta.get("tokenizer", TOKENIZER))
    tok = _sentencepiece(spiece)
    vocab = int(meta["t5_config"]["vocab_size"])
    if tok.get_piece_size() > vocab:
        raise ValueError(f"{spiece}: {tok.get_piece_size()} pieces, more than the encoder's vocab_size {vocab}")
    return TextEncoder(load_model(path, param_dtype), tok, int(meta.get("max_length", 512)), batch_size)


def write_npz_folder(out_dir: str, cfg: t5.T5Config, arrays: Mapping[str, np.ndarray], proj: np.ndarray | None,
                     embed_dim: int, note: str) -> None:
    """The synthetic rig's tiny T5 next to its `spiece.model`: `weights.npz`, `proj.npy` (when `proj` is given) and
    `config.json`."""
    np.savez(os.path.join(out_dir, WEIGHTS_NPZ), **arrays)
    proj_file = None
    if proj is not None:
        proj_file = "proj.npy"
        np.save(os.path.join(out_dir, proj_file), np.asarray(proj, np.float32))
    info = {"t5_config": cfg.to_dict(), "embed_dim": embed_dim, "projection": proj_file, "max_length": 512,
            "tokenizer": TOKENIZER, "pad_id": t5.PAD_ID, "eos_id": t5.EOS_ID, "unk_id": t5.UNK_ID, "note": note}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(info, f, indent=1)


def load_npz_folder(path: str) -> TextEncoder:
    """The text encoder a synthetic dataset was embedded with (`<DIR>/t5`, `write_npz_folder`)."""
    with open(os.path.join(path, "config.json")) as f:
        meta = json.load(f)
    cfg = t5.T5Config.from_dict(meta["t5_config"])
    with np.load(os.path.join(path, WEIGHTS_NPZ)) as z:
        model = load_state_dict(t5.abstract(cfg), {k: z[k] for k in z.files})
    proj = np.load(os.path.join(path, meta["projection"])) if meta.get("projection") else None
    tok = _sentencepiece(os.path.join(path, meta.get("tokenizer", TOKENIZER)))
    return TextEncoder(model, tok, int(meta.get("max_length", 512)), proj=proj)


def load_encoder(path: str) -> TextEncoder:
    """The text encoder of a folder (`--t5` of embed_captions and generate), recognised in `path` or `path/t5`: a
    converted T5 (config.json with `"format": "cosmos_jax.t5/1"`) or the synthetic tiny T5 (config.json with a
    `t5_config` entry and weights.npz). Anything else (a Hugging Face T5 folder included) is refused with a message
    saying what was found."""
    if not os.path.isdir(path):
        raise ValueError(f"--t5 {path}: no such folder (expected a text encoder folder)")
    for cand in (path, os.path.join(path, "t5")):
        cfg = os.path.join(cand, "config.json")
        if not os.path.isfile(cfg):
            continue
        with open(cfg) as f:
            try:
                meta = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{cfg}: not valid JSON ({e})") from e
        if meta.get("format") == MARKER.format:
            return load_converted(cand)
        if "t5_config" in meta and os.path.isfile(os.path.join(cand, WEIGHTS_NPZ)):
            return load_npz_folder(cand)
        if meta.get("model_type") == "t5":
            raise ValueError(f"--t5 {path}: {cfg} is a Hugging Face T5 checkpoint; convert it first with "
                             f"python -m converters.t5_to_orbax --src {cand} --dst DIR, then pass --t5 DIR")
    found = sorted(os.listdir(path))[:12]
    raise ValueError(f"--t5 {path}: not a text encoder folder cosmos_jax can load (found {found}); expected "
                     "a folder written by converters.t5_to_orbax, or spiece.model, config.json (with 't5_config') "
                     "and weights.npz (as written by cosmos_jax.data.synthetic), in it or in its t5/ subfolder")
