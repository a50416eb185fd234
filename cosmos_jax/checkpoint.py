"""Orbax checkpoints of the train state and data iterator, upstream-layout `.pt` exports, and base weights.

Job directory (contracts.md): `orbax/<step>/` (CheckpointManager: state = step, params, buffers, optimizer, EMA;
data = the grain iterator state; meta = seed and step), `checkpoints/iter_{N:09d}_{reg,ema}_model.pt`. Orbax
writes each step to a temporary folder and renames it when complete, so a run killed at any moment (during a save
included) resumes from the last complete step. `.pt` files are written to a temporary name, then renamed.

Base weights (`checkpoint.load_path`, written by `python -m converters.dit_to_orbax`): see
cosmos_jax/base_weights.py; restored strictly.
"""

from __future__ import annotations

import logging
import os

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp

from cosmos_jax import base_weights, sharding
from cosmos_jax import train_state as ts

log = logging.getLogger(__name__)


class Manager:
    """The job's Orbax CheckpointManager (items `state`, `data`, `meta`)."""

    def __init__(self, job_dir: str, max_to_keep: int, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(job_dir, "orbax"))
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.mngr = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.mngr.latest_step()

    def save(self, step: int, state, data_state: dict, meta: dict) -> None:
        self.mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)))

    def wait(self) -> None:
        self.mngr.wait_until_finished()

    def restore(self, step: int, abstract_state):
        out = self.mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
        return out.state, out.data, out.meta

    def close(self) -> None:
        self.mngr.wait_until_finished()
        self.mngr.close()


def export_pt(state, num_blocks: int, out_dir: str, step: int, lora_scale: float = 0.0) -> tuple[str, str] | None:
    """`iter_{N:09d}_reg_model.pt` (bf16, every floating tensor incl. buffers) and `_ema_model.pt` (fp32) with
    upstream key names; loadable with torch.load(weights_only=True). LoRA adapters are merged into the base.
    Multi-process: every process calls it (the arrays are gathered), process 0 writes; others return None."""
    from converters import keymap, pt_io
    from cosmos_jax import lora

    host = sharding.to_host({"params": state["params"], "buffers": state["buffers"], "ema": state["ema"]})
    if jax.process_index() != 0:
        return None
    os.makedirs(out_dir, exist_ok=True)
    buffers = ts.flat(host["buffers"])
    reg_tree, ema_tree = {**ts.flat(host["params"]), **buffers}, {**ts.flat(host["ema"]), **buffers}
    if lora.has_lora(reg_tree):
        reg_tree, ema_tree = lora.merge(reg_tree, lora_scale), lora.merge(ema_tree, lora_scale)
    reg = keymap.to_torch(reg_tree, num_blocks)
    ema = keymap.to_torch(ema_tree, num_blocks)
    reg_path = os.path.join(out_dir, f"iter_{step:09d}_reg_model.pt")
    ema_path = os.path.join(out_dir, f"iter_{step:09d}_ema_model.pt")
    pt_io.save_state_dict({k: np.asarray(v, np.float32).astype(ml_dtypes.bfloat16) for k, v in reg.items()},
                          reg_path)
    pt_io.save_state_dict({k: np.asarray(v, np.float32) for k, v in ema.items()}, ema_path)
    return reg_path, ema_path


def save_weights(path: str, params: dict, buffers: dict, meta: dict | None = None) -> None:
    """Write base weights (the converter's format, cosmos_jax/base_weights.py) from model trees."""
    tree = jax.device_get({"params": params, "buffers": buffers})
    flat = ts.flat(tree)
    rest = {p: np.asarray(a) for p, a in flat.items() if not base_weights.is_block(p)}
    stacked = {p: np.asarray(a) for p, a in flat.items() if base_weights.is_block(p)}
    n = next(iter(stacked.values())).shape[0] if stacked else 0
    blocks = ({p: a[i] for p, a in stacked.items()} for i in range(n))
    base_weights.write(path, rest, blocks, meta or {"source": "cosmos_jax.checkpoint.save_weights"})


class WeightsMismatchError(ValueError):
    pass


def load_weights(path: str, abstract_state, shardings) -> tuple[dict, dict]:
    """Restore base weights strictly onto the state's layout; every missing, unexpected or mis-shaped key is
    listed in the error."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"checkpoint.load_path={path}: no converted weights there. Make them with\n"
            "  python scripts/download_checkpoints.py --checkpoint_dir checkpoints --model_types t2w,v2w\n"
            f"  python -m converters.dit_to_orbax --src <t2w_model.pt or v2w_model.pt> --dst {path}\n"
            "or set --config.checkpoint.load_path= to start from random weights.")
    stored = {p: s for p, (s, _) in base_weights.flat_metadata(path).items()}
    stored_flat = {p[1:]: s for p, s in stored.items()}  # model paths
    where, want, shard = {}, {}, {}  # model path -> ("params" | "buffers"), abstract leaf, sharding
    for top in ("params", "buffers"):
        leaves, shs = ts.flat(abstract_state[top]), ts.flat(shardings[top])
        for p, a in leaves.items():
            if p[-1] not in ("lora_a", "lora_b"):
                where[p], want[p], shard[p] = top, a, shs[p]
    want_flat = {p: tuple(a.shape) for p, a in want.items()}
    problems = [f"missing key {'/'.join(p)} {s}" for p, s in want_flat.items() if p not in stored_flat]
    problems += [f"unexpected key {'/'.join(p)} {s}" for p, s in stored_flat.items() if p not in want_flat]
    problems += [f"shape mismatch {'/'.join(p)}: stored {stored_flat[p]}, expected {s}"
                 for p, s in want_flat.items() if p in stored_flat and stored_flat[p] != s]
    if problems:
        raise WeightsMismatchError(f"{path}: base weights do not match the config's network "
                                   f"({len(problems)} problem(s)):\n  " + "\n  ".join(problems))
    target = ts.unflat({p: jax.ShapeDtypeStruct(stored[p], want[p[1:]].dtype) for p in stored})
    sh = ts.unflat({p: shard[p[1:]] for p in stored})
    restored = ts.flat(base_weights.restore(path, target, sh))
    out = {"params": {}, "buffers": {}}
    for p, a in restored.items():
        out[where[p[1:]]][p[1:]] = a
    return ts.unflat(out["params"]), ts.unflat(out["buffers"])


def restore_job_weights(job_or_orbax_dir: str, step: int | None = None) -> tuple[int, dict]:
    """(step, {"params", "buffers", "ema"}) of a job's checkpoint as host numpy trees; the optimizer state is not
    read. Latest complete step unless `step` is given."""
    root = job_or_orbax_dir
    if os.path.isdir(os.path.join(root, "orbax")):
        root = os.path.join(root, "orbax")
    steps = sorted(int(n) for n in os.listdir(root) if n.isdigit()) if os.path.isdir(root) else []
    if not steps:
        raise FileNotFoundError(f"{job_or_orbax_dir}: no complete Orbax checkpoint (orbax/<step>/) found")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"{root}: no complete checkpoint for step {step} (have {steps})")
    state_dir = os.path.abspath(os.path.join(root, str(step), "state"))
    ckptr = ocp.PyTreeCheckpointer()
    md = ckptr.metadata(state_dir)
    md = dict(getattr(md, "item_metadata", md))
    item = jax.tree.map(lambda m: np.zeros((), np.float32), {k: md[k] for k in ("params", "buffers", "ema")})
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    tree = ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                                                partial_restore=True))
    return step, tree
