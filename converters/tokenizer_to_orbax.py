"""`python -m converters.tokenizer_to_orbax --src DIR --dst DIR [--arch='{"channels": 128}'] [--overwrite]`

Cosmos-Tokenize1-CV8x8x8-720p release files -> the folder `tokenizer.checkpoint_dir` points at
(docs/tokenizer-t5.md §2-§3):
    --src/encoder.jit, --src/decoder.jit   read as `torch.jit.load(f).state_dict()`
    --src/mean_std.pt                      `torch.load(weights_only=True)`: a pair (mean, std), `view(C, -1)` each
written as
    DST/state/     Orbax PyTree {"encoder": params, "decoder": params, "mean": [C, T] f32, "std": [C, T] f32}
    DST/meta.json  {"format", "config" (Cosmos8x8x8Config architecture), "source", "dtypes"}: written last
Every key goes through `cosmos_tokenizer.torch_key_table` (Conv3d weights transposed (2, 3, 4, 1, 0); dtypes kept).
The 5 Haar constant buffers and the 12 unused hybrid-conv keys of older exports are dropped; anything else missing,
unexpected or mis-shaped is listed and the exit status is 1 (nothing is written).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Mapping

import numpy as np

from cosmos_jax.models import cosmos_tokenizer as ct
from cosmos_jax.weights import tree
from cosmos_jax.weights.keymap import StrictLoadError
from cosmos_jax.weights.pt import tensor_to_numpy

JIT_FILES = {"encoder": "encoder.jit", "decoder": "decoder.jit"}


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
    table = ct.torch_key_table(cfg)[side]
    droppable = {k for k in ct.BUFFER_KEYS if k.startswith(side + ".")} | set(ct.unused_hybrid_keys(cfg)[side])
    problems, dropped, tree = [], [], {}
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
            node = tree
            *parents, leaf = path.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = np.ascontiguousarray(ct.torch_to_ours(key, state[key]))
    return tree, problems, dropped


def convert_states(states: Mapping[str, Mapping[str, np.ndarray]], mean_std: tuple[np.ndarray, np.ndarray],
                   cfg: ct.Cosmos8x8x8Config, sources: Mapping[str, str] | None = None) -> tuple[dict, list[str]]:
    """({"encoder", "decoder", "mean", "std"} tree, dropped keys); raises StrictLoadError listing every problem."""
    sources = sources or JIT_FILES
    tree, problems, dropped = {}, [], []
    for side in ("encoder", "decoder"):
        tree[side], p, d = map_state(side, states[side], cfg, sources[side])
        problems += p
        dropped += d
    mean, std = mean_std
    if mean.shape[0] != cfg.latent_channels:
        problems.append(f"mean_std: {mean.shape[0]} channels, expected latent_channels={cfg.latent_channels}")
    if problems:
        raise StrictLoadError("tokenizer release", problems)
    tree["mean"], tree["std"] = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return tree, dropped


def convert(src: str, dst: str, cfg: ct.Cosmos8x8x8Config | None = None, overwrite: bool = False) -> dict:
    """Convert the release files in `src` into `dst`; returns a summary."""
    import orbax.checkpoint as ocp

    t0 = time.time()
    cfg = cfg or ct.Cosmos8x8x8Config.release()
    if os.path.exists(os.path.join(dst, "meta.json")) and not overwrite:
        raise FileExistsError(f"{dst}: already holds a conversion; pass --overwrite to replace it")
    paths = {side: os.path.join(src, f) for side, f in JIT_FILES.items()}
    states = {side: read_jit_state(p) for side, p in paths.items()}
    mean_std = read_mean_std(os.path.join(src, "mean_std.pt"), cfg.latent_channels)
    out, dropped = convert_states(states, mean_std, cfg, sources=paths)
    flat = {side: tree.flat(out[side], dotted=True) for side in ("encoder", "decoder")}
    dtypes = sorted({str(a.dtype) for side in flat for a in flat[side].values()})
    os.makedirs(dst, exist_ok=True)
    marker = os.path.join(dst, "meta.json")
    if os.path.exists(marker):
        os.remove(marker)  # an interrupted rewrite must not look complete
    state_dir = os.path.abspath(os.path.join(dst, "state"))
    if os.path.exists(state_dir):
        shutil.rmtree(state_dir)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(state_dir, out)
    ckptr.wait_until_finished()
    with open(marker + ".tmp", "w") as f:
        json.dump({"format": ct.FORMAT, "config": cfg.architecture(), "source": os.path.abspath(src),
                   "dtypes": dtypes, "mean_std_shape": list(out["mean"].shape)}, f, indent=2)
    os.replace(marker + ".tmp", marker)
    n = {side: len(flat[side]) for side in flat}
    return {"src": src, "dst": dst, "encoder_tensors": n["encoder"], "decoder_tensors": n["decoder"],
            "dropped": len(dropped), "mean_std": "x".join(map(str, out["mean"].shape)), "dtypes": ",".join(dtypes),
            "seconds": round(time.time() - t0, 2)}


def main(argv):
    from absl import flags, logging

    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save step at INFO
    f = flags.FLAGS
    try:
        arch = json.loads(f.arch) if f.arch else {}
        if not isinstance(arch, dict):
            raise ValueError(f"--arch={f.arch!r}: expected a JSON object of Cosmos8x8x8Config fields")
        summary = convert(f.src, f.dst, ct.Cosmos8x8x8Config.release(**arch), f.overwrite)
    except (StrictLoadError, FileExistsError, FileNotFoundError, ValueError, TypeError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(" ".join(f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("src", None, "folder with encoder.jit, decoder.jit and mean_std.pt", required=True)
    flags.DEFINE_string("dst", None, "output folder (tokenizer.checkpoint_dir)", required=True)
    flags.DEFINE_string("arch", "", "JSON overrides of Cosmos8x8x8Config (default: the 720p release)")
    flags.DEFINE_bool("overwrite", False, "replace an existing conversion in --dst")
    app.run(main)
