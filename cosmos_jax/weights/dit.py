"""DiT weights in every outside form: an upstream `.pt`, the converted folder, a training job's checkpoint.

- `load(path, weights, config)`: the network and its weights for inference, from a job directory (its config.json
  rebuilds the network; EMA or regular weights), its `orbax/` folder, a converted folder or an upstream `.pt` (these
  two need `config`); the abstract network is built once.
- `load_into_state(path, abstract, shardings)`: `checkpoint.load_path` (a converted folder or a full fine-tune job)
  restored strictly onto a train state's layout; `fresh_state` is the seed's init with it loaded over.
- `restore_job_weights`: a job's params, buffers and EMA on the host (a LoRA job's frozen base re-made).
- `convert(src, dst, config)`: `.pt` -> converted folder (`python -m converters.dit_to_orbax`), streamed one block
  at a time; `save_folder` writes one from model trees.
- `pt_to_tree` / `load_pt_into` / `tree_to_pt`: a `.pt` <-> {our path: array} through the key map.
Whether an upstream tensor is a parameter or a buffer is stated once, by keymap.Entry.buffer, and read through `part`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from cosmos_jax import lora, optim, sharding
from cosmos_jax import train_state as ts
from cosmos_jax.models import build
from cosmos_jax.utils import memory
from cosmos_jax.weights import checkpoint, folder, keymap, pt, tree

log = logging.getLogger(__name__)

_BUFFERS = frozenset(e.path for e in keymap.ENTRIES if e.buffer)


def part(path: tuple[str, ...]) -> str:
    """Where the upstream tensor at our `path` lives in a converted folder and in a full fine-tune's state:
    "buffers" or "params" (keymap.Entry.buffer)."""
    return "buffers" if path in _BUFFERS else "params"


# ---- the network's tensors -------------------------------------------------------------------------------------------

def _base_vars(model: nnx.Module):
    """Every Param and Buffer but LoRA adapters (the upstream network's tensors)."""
    return tree.flat_vars(model, exclude=(nnx.LoRAParam,)).items()


def shapes(model: nnx.Module) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{path: shape} of every Param and Buffer (LoRA adapters excluded); `model` may be abstract."""
    return {p: tuple(v.get_value().shape) for p, v in _base_vars(model)}


def arrays(model: nnx.Module) -> dict[tuple[str, ...], np.ndarray]:
    """{path: numpy array} of every Param and Buffer (LoRA adapters excluded)."""
    return {p: np.asarray(jax.device_get(v.get_value())) for p, v in _base_vars(model)}


def fill(model: nnx.Module, flat: dict[tuple[str, ...], np.ndarray]) -> None:
    """Write {path: array} into the model in place (paths and shapes must match exactly; LoRA adapters keep their
    values)."""
    tree.fill(model, flat, "DiT weights", exclude=(nnx.LoRAParam,))


def config_shapes(config) -> tuple[dict[tuple[str, ...], tuple[int, ...]], int]:
    """({path: shape}, num_blocks) of a config's network, computed abstractly (no weights are allocated)."""
    cfg = build.dit_config(config)
    return shapes(build.abstract(cfg)), cfg.num_blocks


# ---- .pt <-> {our path: array} ---------------------------------------------------------------------------------------

def check_pt(index: pt.PtIndex, our_shapes, num_blocks: int) -> list[str]:
    """Every key problem (missing / unexpected / mis-shaped, non-tensor entries), from the archive's index alone."""
    problems = keymap.key_problems({k: index.shape(k) for k in index.tensors}, our_shapes, num_blocks)
    return problems + [f"unexpected non-tensor entry {k}" for k in index.other
                       if not k.endswith(keymap.EXTRA_STATE_SUFFIX)]


def pt_to_tree(path: str, model) -> dict[tuple[str, ...], np.ndarray]:
    """{our path: numpy} from an upstream checkpoint, checked against `model`'s (possibly abstract) shapes. Read
    with the streaming reader (no torch; the same one `convert` uses)."""
    with pt.PtIndex(path) as index:
        bad = [k for k in index.other if not k.endswith(keymap.EXTRA_STATE_SUFFIX)]
        if bad:
            raise pt.PtFormatError(f"{path}: entries that are not tensors: {bad[:5]}")
        flat = {k: index.read(k) for k in index.tensors if not k.endswith(keymap.EXTRA_STATE_SUFFIX)}
    return keymap.from_torch(flat, shapes(model), model.net.cfg.num_blocks, source=path)


def load_pt_into(model, path: str) -> None:
    """Overwrite every parameter and buffer of `model` from the `.pt` at `path` (strict; cast to fp32)."""
    fill(model, pt_to_tree(path, model))


def tree_to_pt(flat: dict[tuple[str, ...], np.ndarray], num_blocks: int, path: str, dtype=None) -> None:
    """Write {our path: array} as an upstream `.pt` with torch (optionally cast to dtype, e.g. bf16)."""
    state = keymap.to_torch(flat, num_blocks)
    if dtype is not None:
        state = {k: v.astype(dtype) for k, v in state.items()}
    pt.save_state_dict(state, path)


# ---- the converted folder --------------------------------------------------------------------------------------------

def convert(src: str, dst: str, config, overwrite: bool = False) -> dict:
    """Upstream `.pt` -> converted folder (cosmos_jax/weights/folder.py); raises keymap.StrictLoadError listing every
    problem before anything is written. Tensors are streamed out of the zip one by one and written one block at a
    time; dtypes are kept. Returns a summary."""
    t0 = time.time()
    folder.MARKER.refuse_overwrite(dst, overwrite)
    our_shapes, num_blocks = config_shapes(config)
    with pt.PtIndex(src) as index:
        problems = check_pt(index, our_shapes, num_blocks)
        if problems:
            raise keymap.StrictLoadError(src, problems)

        def read(key: str, entry: keymap.Entry):
            a = index.read(key)
            return a.T if entry.transpose else a

        rest = {(part(e.path), *e.path): read(e.torch_key, e) for e in keymap.HEAD + keymap.TAIL}
        dtypes = sorted({str(a.dtype) for a in rest.values()})
        blocks = ({(part(e.path), *e.path): read(e.torch_key.format(i=i), e) for e in keymap.BLOCK}
                  for i in range(num_blocks))
        folder.write(dst, rest, blocks, {"source": os.path.abspath(src), "dtypes": dtypes})
        used = [k for k in index.tensors if not k.endswith(keymap.EXTRA_STATE_SUFFIX)]
        values = sum(int(index.tensors[k].nbytes // index.tensors[k].dtype.itemsize) for k in used)
        skipped = len(index.tensors) - len(used) + len(index.other)
    return {"src": src, "dst": dst, "tensors": len(used), "values": values, "skipped_extra_state": skipped,
            "dtypes": dtypes, "seconds": round(time.time() - t0, 2), "peak_rss_mb": round(memory.peak_rss_mb(), 1)}


def save_folder(path: str, params: dict, buffers: dict, meta: dict | None = None) -> None:
    """Write a converted folder from model trees (e.g. made by training or a test)."""
    flat = tree.flat(jax.device_get({"params": params, "buffers": buffers}))
    rest = {p: np.asarray(a) for p, a in flat.items() if not folder.is_block(p)}
    stacked = {p: np.asarray(a) for p, a in flat.items() if folder.is_block(p)}
    n = next(iter(stacked.values())).shape[0] if stacked else 0
    blocks = ({p: a[i] for p, a in stacked.items()} for i in range(n))
    folder.write(path, rest, blocks, meta or {"source": "cosmos_jax.weights.dit.save_folder"})


# ---- a train state ---------------------------------------------------------------------------------------------------

class WeightsMismatchError(ValueError):
    pass


def check_strict(source: str, stored: dict, want: dict) -> None:
    """Raise WeightsMismatchError listing every missing, unexpected and mis-shaped key ({model path: shape})."""
    problems = [f"missing key {'/'.join(p)} {s}" for p, s in want.items() if p not in stored]
    problems += [f"unexpected key {'/'.join(p)} {s}" for p, s in stored.items() if p not in want]
    problems += [f"shape mismatch {'/'.join(p)}: stored {stored[p]}, expected {s}"
                 for p, s in want.items() if p in stored and tuple(stored[p]) != s]
    if problems:
        raise WeightsMismatchError(f"{source}: base weights do not match the config's network "
                                   f"({len(problems)} problem(s)):\n  " + "\n  ".join(problems))


def _layout(abstract_state, shardings) -> tuple[dict, dict, dict]:
    """({model path: "params"|"buffers"}, {model path: abstract leaf}, {model path: sharding}) of every upstream
    tensor in this state (a LoRA state keeps the base kernels in `buffers`; adapters are left out)."""
    where, want, shard = {}, {}, {}
    for top in ("params", "buffers"):
        leaves, shs = tree.flat(abstract_state[top]), tree.flat(shardings[top])
        for p, a in leaves.items():
            if p[-1] not in lora.LORA_LEAVES:
                where[p], want[p], shard[p] = top, a, shs[p]
    return where, want, shard


def _folder_into_state(path: str, abstract_state, shardings) -> tuple[dict, dict]:
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"checkpoint.load_path={path}: no converted weights there. Make them with\n"
            "  python scripts/download_checkpoints.py --checkpoint_dir checkpoints --model_types t2w,v2w\n"
            f"  python -m converters.dit_to_orbax --src <t2w_model.pt or v2w_model.pt> --dst {path}\n"
            "or set --config.checkpoint.load_path= to start from random weights.")
    stored = {p: s for p, (s, _) in folder.flat_metadata(path).items()}
    where, want, shard = _layout(abstract_state, shardings)
    check_strict(path, {p[1:]: s for p, s in stored.items()}, {p: tuple(a.shape) for p, a in want.items()})
    target = tree.unflat({p: jax.ShapeDtypeStruct(stored[p], want[p[1:]].dtype) for p in stored})
    sh = tree.unflat({p: shard[p[1:]] for p in stored})
    out = {"params": {}, "buffers": {}}
    for p, a in tree.flat(folder.restore(path, target, sh)).items():
        out[where[p[1:]]][p[1:]] = a
    return tree.unflat(out["params"]), tree.unflat(out["buffers"])


def _job_into_state(job: str, abstract_state, shardings) -> tuple[dict, dict]:
    """A full-fine-tune job's latest regular params and buffers, placed on this state's shardings."""
    step, stored_tree = checkpoint.read_weights(job)
    if lora.has_lora(tree.flat(stored_tree["params"])):
        raise FileNotFoundError(f"checkpoint.load_path={job} is a LoRA job; use its merged export as the base: "
                                f"python -m converters.dit_to_orbax --src {job}/checkpoints/"
                                f"iter_{step:09d}_reg_model.pt --dst DIR")
    where, want, shard = _layout(abstract_state, shardings)
    stored = {p: a for top in ("params", "buffers") for p, a in tree.flat(stored_tree[top]).items()}
    check_strict(f"{job} step {step}", {p: a.shape for p, a in stored.items()},
                 {p: tuple(a.shape) for p, a in want.items()})
    out = {"params": {}, "buffers": {}}
    for p, a in stored.items():
        out[where[p]][p] = jax.device_put(a, shard[p])
    log.info("base weights: %s step %d (regular weights)", job, step)
    return tree.unflat(out["params"]), tree.unflat(out["buffers"])


def load_into_state(path: str, abstract_state, shardings) -> tuple[dict, dict]:
    """(params, buffers) of `checkpoint.load_path` strictly on the state's layout and shardings: a converted folder
    (restored one block at a time) or a full fine-tune job (its latest regular weights). Every missing, unexpected
    or mis-shaped key is listed in the WeightsMismatchError."""
    job = checkpoint.job_of(path)
    if job is not None:
        return _job_into_state(job, abstract_state, shardings)
    if os.path.isfile(os.path.join(path, "config.json")) and not folder.MARKER.marked(path):
        raise FileNotFoundError(f"checkpoint.load_path={path}: a training job directory with no saved checkpoint "
                                "(no orbax/ folder: it stopped before its first save); point it at a job that "
                                "saved one, or at converted base weights")
    return _folder_into_state(path, abstract_state, shardings)


def fresh_state(config, cfg_dit, tx, mesh, abstract, shardings) -> dict:
    """A new job's state: initialised from the seed, then the base weights of `checkpoint.load_path` (converted
    folder or job directory) loaded over params and buffers; the EMA restarts from the params."""
    state = ts.create(cfg_dit, tx, mesh, shardings, config.seed)
    if config.checkpoint.load_path:
        params, buffers = load_into_state(config.checkpoint.load_path, abstract, shardings)
        state = ts.with_weights(state, params, buffers, shardings)
    return state


def lora_base(config, mesh=None):
    """A LoRA job's `buffers` (frozen base in the compute dtype + fixed buffers) as training made them
    (`fresh_state`: the seed's init, `checkpoint.load_path` loaded over it)."""
    cfg = build.dit_config(config)
    if mesh is None:
        mesh = sharding.one_device_mesh()
    tx = optim.make(config)
    _, abstract, sh = ts.layout(cfg, tx, mesh, config.seed)
    return fresh_state(config, cfg, tx, mesh, abstract, sh)["buffers"]


def restore_job_weights(job_or_orbax_dir: str, step: int | None = None) -> tuple[int, dict]:
    """(step, {"params", "buffers", "ema"}) of a job's checkpoint as host numpy trees (checkpoint.read_weights); a
    LoRA job's frozen base, which its checkpoints do not store, is re-made from its load_path (or its seed)."""
    step, stored = checkpoint.read_weights(job_or_orbax_dir, step)
    if "buffers" not in stored:
        job = os.path.dirname(checkpoint.orbax_root(job_or_orbax_dir))
        stored["buffers"] = sharding.to_host(lora_base(checkpoint.job_config(job), mesh=None))
    return step, stored


# ---- inference -------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Loaded:
    config: ml_collections.ConfigDict
    graphdef: object
    params: dict
    buffers: dict
    source: str


def _read_network(path: str, model, p_abs: dict, b_abs: dict) -> tuple[dict, dict]:
    """(params, buffers) of a converted folder or an upstream `.pt`, strictly against `model`."""
    if folder.MARKER.marked(path):
        mesh = sharding.one_device_mesh()
        abstract = {"params": p_abs, "buffers": b_abs}
        one = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
        return jax.device_get(_folder_into_state(path, abstract, one))
    if path.endswith((".pt", ".pth")) and os.path.isfile(path):
        nested = tree.unflat({(part(p), *p): a for p, a in pt_to_tree(path, model).items()})
        return nested["params"], nested["buffers"]
    raise FileNotFoundError(f"{path}: expected a job directory, converted base weights (meta.json) or a .pt file")


def load(checkpoint_path: str, weights: str = "ema", config=None) -> Loaded:
    """A job directory (network rebuilt from its saved config.json; EMA or reg weights), its orbax/ folder,
    converted base weights (meta.json) or an upstream `.pt` (these two need `config` for the network)."""
    if weights not in ("ema", "reg"):
        raise ValueError(f"--weights={weights!r}: expected 'ema' or 'reg'")
    job = checkpoint.job_of(checkpoint_path)
    if job is None and config is None:
        raise ValueError(f"{checkpoint_path}: not a job directory; give --config for its network")
    config = checkpoint.job_config(job) if job is not None else config
    model = build.abstract(build.dit_config(config))
    graphdef, p_abs, b_abs = ts.split(model)
    if job is not None:
        step, stored = restore_job_weights(job)
        params, buffers = stored["ema" if weights == "ema" else "params"], stored["buffers"]
        source = f"{job} step {step} ({weights})"
    else:
        source = checkpoint_path.rstrip("/")
        params, buffers = _read_network(source, model, p_abs, b_abs)
    params = jax.tree.map(lambda a, t: jnp.asarray(a, t.dtype), params, p_abs)
    buffers = jax.tree.map(lambda a, t: jnp.asarray(a, t.dtype), buffers, b_abs)
    return Loaded(config, graphdef, params, buffers, source)
