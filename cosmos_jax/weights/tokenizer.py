"""The tokenizer's weights: the release's TorchScript files, the converted folder, and the Tokenizer a config names.

Release (Cosmos-Tokenize1-CV8x8x8-720p; docs/tokenizer-t5.md §2-§3), read by `convert` (`python -m
converters.tokenizer_to_orbax`):
    SRC/encoder.jit, SRC/decoder.jit   read as `torch.jit.load(f).state_dict()`
    SRC/mean_std.pt                    `torch.load(weights_only=True)`: a pair (mean, std), `view(C, -1)` each
Converted folder (`tokenizer.checkpoint_dir`):
    DST/state/     Orbax PyTree {"encoder": params, "decoder": params, "mean": [C, T] f32, "std": [C, T] f32}
    DST/meta.json  {"format", "config" (Cosmos8x8x8Config architecture), "source", "dtypes"}: written last
                   (artifact.py)
Every key goes through `torch_key_table`: our paths are the torch keys without the `encoder.` / `decoder.` prefix
(`quant_conv` / `post_quant_conv` sit inside our encoder / decoder) with `conv3d.weight` -> `kernel` (transposed
(2, 3, 4, 1, 0)), `conv3d.bias` -> `bias`, `norm.weight` -> `scale`, `norm.bias` -> `bias`; dtypes kept. The 5 Haar
constant buffers and the 12 unused hybrid-conv keys of older exports are dropped; anything else missing, unexpected
or mis-shaped is listed in one StrictLoadError (nothing is written).

`from_config` builds the `Tokenizer` (cosmos_jax/models/tokenizer.py) a config names: the weight-free `haar`, or
the Flax Cosmos network (cosmos_jax/models/cosmos_tokenizer.py) on a converted folder, run in `tokenizer.dtype`.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from cosmos_jax.models import cosmos_tokenizer as ct
from cosmos_jax.models.tokenizer import Tokenizer, haar_tokenizer, latent_frames
from cosmos_jax.weights import artifact, folder, tree
from cosmos_jax.weights.keymap import StrictLoadError
from cosmos_jax.weights.pt import tensor_to_numpy

MARKER = artifact.TOKENIZER
JIT_FILES = {"encoder": "encoder.jit", "decoder": "decoder.jit"}
# Constant buffers of the JIT files (the Haar filters): dropped by the converter.
BUFFER_KEYS = ("encoder.patcher3d.wavelets", "encoder.patcher3d._arange", "encoder.patcher3d.patch_size_buffer",
               "decoder.unpatcher3d.wavelets", "decoder.unpatcher3d._arange")


# --------------------------------------------------------------------------------------------------------------------
# Torch keys <-> our paths

def torch_key_table(cfg: ct.Cosmos8x8x8Config) -> dict[str, dict[str, tuple[str, tuple[int, ...]]]]:
    """{"encoder"|"decoder": {torch key: (our dotted path, torch shape)}} for the JIT file of that side."""
    out = {}
    for side, model in zip(("encoder", "decoder"), ct.abstract(cfg), strict=True):
        shapes = {p: tuple(v.get_value().shape) for p, v in tree.flat_vars(model, dotted=True).items()}
        table = {}
        for path, shape in shapes.items():
            mod, leaf = path.rsplit(".", 1)
            prefix = "" if mod in ("quant_conv", "post_quant_conv") else side + "."
            if f"{mod}.kernel" in shapes:  # a CausalConv3d
                key = f"{prefix}{mod}.conv3d.{'weight' if leaf == 'kernel' else 'bias'}"
                tshape = (shape[4], shape[3], *shape[:3]) if leaf == "kernel" else shape
            else:  # a CausalNormalize
                key, tshape = f"{prefix}{mod}.norm.{'weight' if leaf == 'scale' else 'bias'}", shape
            table[key] = (path, tshape)
        out[side] = table
    return out


def unused_hybrid_keys(cfg: ct.Cosmos8x8x8Config) -> dict[str, tuple[str, ...]]:
    """Keys the older Cosmos-Tokenizer code exports for no-op (or partial) resample modules: never used, dropped."""
    table, n = torch_key_table(cfg), len(cfg.channels_mult)
    sides = {"encoder": [f"encoder.down.{i}.downsample" for i in range(n - 1)],
             "decoder": [f"decoder.up.{i}.upsample" for i in range(1, n)]}
    return {side: tuple(k for m in mods for j in (1, 2, 3) for leaf in ("weight", "bias")
                        if (k := f"{m}.conv{j}.conv3d.{leaf}") not in table[side]) for side, mods in sides.items()}


def torch_to_ours(key: str, value: np.ndarray) -> np.ndarray:
    """PyTorch Conv3d weight (out, in, kT, kH, kW) -> kernel (kT, kH, kW, in, out); everything else unchanged."""
    return np.transpose(value, (2, 3, 4, 1, 0)) if key.endswith("conv3d.weight") else value


# --------------------------------------------------------------------------------------------------------------------
# The release's files -> the converted folder

def read_jit_state(path: str) -> dict[str, np.ndarray]:
    import torch

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (expected a TorchScript file of the tokenizer release)")
    try:
        module = torch.jit.load(path, map_location="cpu")
    except RuntimeError as e:
        raise ValueError(f"{path}: not a TorchScript file ({str(e).splitlines()[0]})") from e
    return {k: tensor_to_numpy(v.detach().cpu()) for k, v in module.state_dict().items()}


def read_mean_std(path: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """mean_std.pt -> (mean [C, T], std [C, T]) in fp32; any stored rank (upstream reshapes with view(C, -1))."""
    import torch

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (expected the tokenizer's mean_std.pt)")
    pair = torch.load(path, map_location="cpu", weights_only=True)
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(torch.is_tensor(t) for t in pair)):
        raise ValueError(f"{path}: expected a pair (mean, std) of tensors, got {type(pair).__name__}")
    out = []
    for name, t in zip(("mean", "std"), pair, strict=True):
        if t.numel() % channels or t.numel() == 0:
            raise ValueError(f"{path}: {name} has {t.numel()} values (shape {tuple(t.shape)}), expected a multiple "
                             f"of {channels} latent channels")
        out.append(t.detach().float().reshape(channels, -1).numpy())
    if out[0].shape != out[1].shape:
        raise ValueError(f"{path}: mean {out[0].shape} and std {out[1].shape} differ")
    return out[0], out[1]


def map_state(side: str, state: Mapping[str, np.ndarray], cfg: ct.Cosmos8x8x8Config,
              source: str) -> tuple[dict, list[str], list[str]]:
    """(nested params of our `side` model, problems, dropped keys) from a JIT state dict."""
    table = torch_key_table(cfg)[side]
    droppable = {k for k in BUFFER_KEYS if k.startswith(side + ".")} | set(unused_hybrid_keys(cfg)[side])
    problems, dropped, mapped = [], [], {}
    for key, value in state.items():
        if key in droppable:
            dropped.append(key)
        elif key not in table:
            problems.append(f"{source}: unexpected key {key} {tuple(np.shape(value))}")
    for key, (path, want) in table.items():
        if key not in state:
            problems.append(f"{source}: missing key {key} (expected shape {want})")
        elif tuple(state[key].shape) != want:
            problems.append(f"{source}: shape mismatch {key}: got {tuple(state[key].shape)}, expected {want}")
        else:
            mapped[path] = np.ascontiguousarray(torch_to_ours(key, state[key]))
    return tree.unflat(mapped), problems, dropped


def convert_states(states: Mapping[str, Mapping[str, np.ndarray]], mean_std: tuple[np.ndarray, np.ndarray],
                   cfg: ct.Cosmos8x8x8Config, sources: Mapping[str, str] | None = None) -> tuple[dict, list[str]]:
    """({"encoder", "decoder", "mean", "std"} tree, dropped keys); raises StrictLoadError listing every problem."""
    sources = sources or JIT_FILES
    out, problems, dropped = {}, [], []
    for side in ("encoder", "decoder"):
        out[side], p, d = map_state(side, states[side], cfg, sources[side])
        problems += p
        dropped += d
    mean, std = mean_std
    if mean.shape[0] != cfg.latent_channels:
        problems.append(f"mean_std: {mean.shape[0]} channels, expected latent_channels={cfg.latent_channels}")
    if problems:
        raise StrictLoadError("tokenizer release", problems)
    out["mean"], out["std"] = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return out, dropped


def convert(src: str, dst: str, cfg: ct.Cosmos8x8x8Config | None = None, overwrite: bool = False) -> dict:
    """Convert the release files in `src` into `dst`; returns a summary."""
    t0 = time.time()
    cfg = cfg or ct.Cosmos8x8x8Config.release()
    MARKER.refuse_overwrite(dst, overwrite)
    paths = {side: os.path.join(src, f) for side, f in JIT_FILES.items()}
    states = {side: read_jit_state(p) for side, p in paths.items()}
    mean_std = read_mean_std(os.path.join(src, "mean_std.pt"), cfg.latent_channels)
    out, dropped = convert_states(states, mean_std, cfg, sources=paths)
    flat = {side: tree.flat(out[side], dotted=True) for side in ("encoder", "decoder")}
    dtypes = sorted({str(a.dtype) for side in flat for a in flat[side].values()})
    MARKER.begin(dst)
    folder.save_tree(os.path.join(dst, "state"), out)
    MARKER.finish(dst, {"config": cfg.architecture(), "source": os.path.abspath(src), "dtypes": dtypes,
                        "mean_std_shape": list(out["mean"].shape)})
    n = {side: len(flat[side]) for side in flat}
    return {"src": src, "dst": dst, "encoder_tensors": n["encoder"], "decoder_tensors": n["decoder"],
            "dropped": len(dropped), "mean_std": "x".join(map(str, out["mean"].shape)), "dtypes": ",".join(dtypes),
            "seconds": round(time.time() - t0, 2)}


# --------------------------------------------------------------------------------------------------------------------
# The converted folder -> a Tokenizer

def read_meta(checkpoint_dir: str) -> dict:
    """The converted folder's meta.json, checked."""
    return MARKER.read(checkpoint_dir, setting="tokenizer.checkpoint_dir")


def load(checkpoint_dir: str, dtype: str = "bfloat16", **exec_overrides):
    """(config, encoder, decoder, mean [C, T], std [C, T]) from a converter output folder; params cast to dtype."""
    meta = read_meta(checkpoint_dir)
    cfg = ct.Cosmos8x8x8Config(**meta["config"], dtype=dtype, **exec_overrides)
    state = ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join(checkpoint_dir, "state")))
    enc, dec = ct.abstract(cfg)
    src = os.path.join(checkpoint_dir, "state")
    enc = tree.fill(enc, tree.flat(state["encoder"], dotted=True), f"{src} encoder (tokenizer config)",
                    dotted=True, dtype=jnp.dtype(dtype))
    dec = tree.fill(dec, tree.flat(state["decoder"], dotted=True), f"{src} decoder (tokenizer config)",
                    dotted=True, dtype=jnp.dtype(dtype))
    mean, std = (np.asarray(state[k], np.float32) for k in ("mean", "std"))
    return cfg, enc, dec, mean, std


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x):
    return nnx.merge(graphdef, state)(x).astype(jnp.float32)


def tokenizer(checkpoint_dir: str, pixel_chunk_duration: int, sigma_data: float = 0.5, dtype: str = "bfloat16",
              expect: Mapping[str, int] | None = None) -> Tokenizer:
    """A `Tokenizer` running the converted Cosmos tokenizer in `dtype`; mean/std sliced to the chunk's latent frames
    (upstream `view(16, -1)[:, :latent_chunk]`) and, like upstream's bf16 buffers, rounded to `dtype`.
    `expect`: {config key: value} (latent_channels, temporal_compression, spatial_compression) to check."""
    cfg, enc, dec, mean, std = load(checkpoint_dir, dtype)
    for key, want in (expect or {}).items():
        if getattr(cfg, key) != want:
            raise ValueError(f"tokenizer.{key}={want} but {checkpoint_dir}/meta.json has {key}={getattr(cfg, key)}")
    tc = latent_frames(pixel_chunk_duration, cfg.temporal_compression)
    if mean.shape[1] < tc:
        raise ValueError(f"{checkpoint_dir}: mean/std have {mean.shape[1]} latent frames, tokenizer."
                         f"pixel_chunk_duration={pixel_chunk_duration} needs {tc}")
    rnd = lambda a: np.asarray(jnp.asarray(a[:, :tc], jnp.dtype(dtype)), np.float32)  # noqa: E731
    enc_def, enc_state = nnx.split(enc)
    dec_def, dec_state = nnx.split(dec)
    return Tokenizer(encode_raw=functools.partial(_apply, enc_def, enc_state),
                     decode_raw=functools.partial(_apply, dec_def, dec_state),
                     mean_CT=rnd(mean), std_CT=rnd(std), pixel_chunk_duration=pixel_chunk_duration,
                     sigma_data=sigma_data, temporal_compression=cfg.temporal_compression,
                     spatial_compression=cfg.spatial_compression)


def from_config(config) -> Tokenizer:
    """The tokenizer `config.tokenizer` names: `haar` (weight-free) or `cosmos` (its `checkpoint_dir`)."""
    t = config.tokenizer
    if t.name == "haar":
        return haar_tokenizer(int(t.pixel_chunk_duration), float(config.diffusion.sigma_data))
    if t.name == "cosmos":  # the Flax Cosmos-Tokenize1 network on a converted folder
        expect = {k: int(t[k]) for k in ("latent_channels", "temporal_compression", "spatial_compression") if k in t}
        return tokenizer(str(t.checkpoint_dir), int(t.pixel_chunk_duration), float(config.diffusion.sigma_data),
                         dtype=str(t.get("dtype", "bfloat16")), expect=expect)
    raise ValueError(f"tokenizer.name={t.name!r}: expected 'haar' or 'cosmos'")
