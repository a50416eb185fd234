"""Orbax checkpoints of the train state and data iterator, upstream-layout `.pt` exports, and base weights.

Job directory (docs/formats.md): `orbax/<step>/` (CheckpointManager: state = step, params, buffers, optimizer, EMA;
data = the grain iterator state; meta = seed and step), `checkpoints/iter_{N:09d}_{reg,ema}_model.pt`. Orbax
writes each step to a temporary folder and renames it when complete, so a run killed at any moment (during a save
included) resumes from the last complete step. `.pt` files are written to a temporary name, then renamed.

Base weights (`checkpoint.load_path`, written by `python -m converters.dit_to_orbax`): see
cosmos_jax/base_weights.py; restored strictly.
"""

from __future__ import annotations

import logging
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from cosmos_jax import base_weights, sharding
from cosmos_jax import train_state as ts
from cosmos_jax.export import export_paths
from cosmos_jax.weights import tree

log = logging.getLogger(__name__)


class SaveError(OSError):
    """A checkpoint or export that could not be written; names the folder, the bytes needed and the last complete
    checkpoint."""


def saved_part(state, lora: bool) -> dict:
    """What a checkpoint stores. A LoRA job's `buffers` (the frozen base and the fixed buffers) are not stored at
    each step: they are re-read from `checkpoint.load_path`, or re-made from the seed, when the job resumes."""
    return {k: v for k, v in state.items() if not (lora and k == "buffers")}


def tree_nbytes(tree) -> int:
    return int(sum(np.prod(a.shape, dtype=np.int64) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree)))


def free_bytes(folder: str) -> int:
    """Free bytes of the file system that holds `folder` (or its nearest existing parent)."""
    while not os.path.isdir(folder):
        folder = os.path.dirname(os.path.abspath(folder))
    return shutil.disk_usage(folder).free


def ensure_space(folder: str, needed: int, what: str, last_step: int | None) -> None:
    free = free_bytes(folder)
    if free < needed:
        raise SaveError(f"not enough space for {what} in {folder}: needs {needed / 1e9:.2f} GB, "
                        f"{free / 1e9:.2f} GB free (No space left on device); the last complete checkpoint is "
                        f"{f'step {last_step}' if last_step is not None else 'none'}. Free space or raise "
                        "checkpoint.save_iter / lower checkpoint.max_to_keep, then rerun to resume.")


def orbax_root(job_or_orbax_dir: str) -> str:
    """The folder of a job's Orbax steps: `<job>/orbax`, or the given folder itself when it is that folder."""
    sub = os.path.join(job_or_orbax_dir, "orbax")
    return sub if os.path.isdir(sub) or not os.path.isdir(job_or_orbax_dir) else job_or_orbax_dir


def complete_steps(job_or_orbax_dir: str) -> list[int]:
    """Steps with a complete Orbax checkpoint (Orbax writes `<step>.orbax-checkpoint-tmp-*` and renames)."""
    root = orbax_root(job_or_orbax_dir)
    return sorted(int(n) for n in os.listdir(root) if n.isdigit()) if os.path.isdir(root) else []


def remove_partial(job_dir: str) -> list[str]:
    """Delete Orbax temporary folders left by a failed or killed save; returns what was removed."""
    root = os.path.join(job_dir, "orbax")
    gone = [os.path.join(root, n) for n in (os.listdir(root) if os.path.isdir(root) else []) if not n.isdigit()
            and "tmp" in n]
    for g in gone:
        shutil.rmtree(g, ignore_errors=True)
    return gone


class Manager:
    """The job's Orbax CheckpointManager (items `state`, `data`, `meta`)."""

    def __init__(self, job_dir: str, max_to_keep: int, async_save: bool = True, concurrent_gb: int = 8):
        """`async_save`: the step goes on while the checkpoint is written (Orbax first copies the device-resident
        state to host memory); `concurrent_gb`: the bytes Orbax serialises (or reads) at once, which bounds its
        host buffers (its default, 96, holds about a whole 7B state)."""
        self.job_dir = job_dir
        self.directory = os.path.abspath(os.path.join(job_dir, "orbax"))
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=async_save)
        handler = ocp.StandardCheckpointHandler(save_concurrent_gb=concurrent_gb, restore_concurrent_gb=concurrent_gb)
        self.mngr = ocp.CheckpointManager(self.directory, options=options, item_handlers={
            "state": handler, "data": ocp.JsonCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
        self.pending: int | None = None

    def latest_step(self) -> int | None:
        return self.mngr.latest_step()

    def save(self, step: int, state, data_state: dict, meta: dict) -> int:
        """Start writing `state` (already `saved_part`) after checking the free space; returns its bytes. A failed
        earlier asynchronous save is raised here at the latest (and by `check` at every step)."""
        self.check()
        nbytes = tree_nbytes(state)
        ensure_space(self.directory, int(nbytes * 1.02) + (1 << 20), f"the checkpoint of step {step}",
                     self.last_complete())
        try:
            self.mngr.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta)))
        except Exception as e:
            self._failed(step, nbytes, e)
        self.pending = step
        return nbytes

    def last_complete(self) -> int | None:
        steps = complete_steps(self.job_dir)
        return steps[-1] if steps else None

    def _failed(self, step: int, nbytes: int, e: BaseException):
        removed = remove_partial(self.job_dir)
        raise SaveError(f"saving the checkpoint of step {step} to {self.directory} failed ({nbytes / 1e9:.2f} GB "
                        f"needed, {free_bytes(self.directory) / 1e9:.2f} GB free): {e}; removed the partial "
                        f"{removed or 'nothing'}; the last complete checkpoint is step {self.last_complete()}. "
                        "Rerun to resume from it.") from e

    def check(self) -> None:
        """Raise SaveError now if the asynchronous save in flight has failed."""
        if self.pending is None:
            return
        try:
            self.mngr.check_for_errors()
        except Exception as e:
            step, self.pending = self.pending, None
            self._failed(step, 0, e)

    def wait(self) -> None:
        try:
            self.mngr.wait_until_finished()
            self.mngr.check_for_errors()
        except Exception as e:
            step, self.pending = self.pending, None
            self._failed(step if step is not None else -1, 0, e)
        self.pending = None

    def restore(self, step: int, abstract_state):
        out = self.mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
        return out.state, out.data, out.meta

    def restore_meta(self, step: int) -> dict:
        return self.mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def close(self) -> None:
        self.wait()
        self.mngr.close()


def exported_steps(out_dir: str) -> list[int]:
    """Steps whose reg and EMA `.pt` files are both complete (written under a temporary name, then renamed)."""
    if not os.path.isdir(out_dir):
        return []
    steps = {int(n[5:14]) for n in os.listdir(out_dir) if n.startswith("iter_") and n.endswith("_reg_model.pt")}
    return sorted(s for s in steps if all(os.path.isfile(p) for p in export_paths(out_dir, s)))


def prune_exports(out_dir: str, keep: int) -> list[str]:
    """Remove the oldest exports so that, with the one about to be written, `keep` remain; also stale temporary
    files of killed exports. Returns the removed paths."""
    removed = []
    if not os.path.isdir(out_dir):
        return removed
    for n in os.listdir(out_dir):
        if ".tmp" in n:
            os.remove(os.path.join(out_dir, n))
            removed.append(os.path.join(out_dir, n))
    steps = exported_steps(out_dir)
    for s in steps[:max(0, len(steps) - (keep - 1))]:
        for p in export_paths(out_dir, s):
            os.remove(p)
            removed.append(p)
        lora_stem = os.path.join(out_dir, f"iter_{s:09d}_lora")
        for ext in (".safetensors", ".json"):
            if os.path.isfile(lora_stem + ext):
                os.remove(lora_stem + ext)
    return removed


def export_pt(state, num_blocks: int, out_dir: str, step: int, lora_scale: float = 0.0) -> tuple[str, str] | None:
    """`iter_{N:09d}_reg_model.pt` (bf16, every floating tensor incl. buffers) and `_ema_model.pt` (fp32) with
    upstream key names; loadable with torch.load(weights_only=True). LoRA adapters are merged into the base.
    Multi-process: every process calls it (the arrays are gathered), process 0 writes; others return None.
    Streamed one tensor at a time (cosmos_jax/export.py): host memory is about one block, not the model."""
    from cosmos_jax import export

    return export.export_pt(state, num_blocks, out_dir, step, lora_scale=lora_scale)


def save_weights(path: str, params: dict, buffers: dict, meta: dict | None = None) -> None:
    """Write base weights (the converter's format, cosmos_jax/base_weights.py) from model trees."""
    flat = tree.flat(jax.device_get({"params": params, "buffers": buffers}))
    rest = {p: np.asarray(a) for p, a in flat.items() if not base_weights.is_block(p)}
    stacked = {p: np.asarray(a) for p, a in flat.items() if base_weights.is_block(p)}
    n = next(iter(stacked.values())).shape[0] if stacked else 0
    blocks = ({p: a[i] for p, a in stacked.items()} for i in range(n))
    base_weights.write(path, rest, blocks, meta or {"source": "cosmos_jax.checkpoint.save_weights"})


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
        leaves, shs = tree.flat(abstract_state[top]), tree.flat(shardings[top])
        for p, a in leaves.items():
            if p[-1] not in ("lora_a", "lora_b"):
                where[p], want[p], shard[p] = top, a, shs[p]
    check_strict(path, stored_flat, {p: tuple(a.shape) for p, a in want.items()})
    target = tree.unflat({p: jax.ShapeDtypeStruct(stored[p], want[p[1:]].dtype) for p in stored})
    sh = tree.unflat({p: shard[p[1:]] for p in stored})
    restored = tree.flat(base_weights.restore(path, target, sh))
    out = {"params": {}, "buffers": {}}
    for p, a in restored.items():
        out[where[p[1:]]][p[1:]] = a
    return tree.unflat(out["params"]), tree.unflat(out["buffers"])


def restore_job_weights(job_or_orbax_dir: str, step: int | None = None) -> tuple[int, dict]:
    """(step, {"params", "buffers", "ema"}) of a job's checkpoint as host numpy trees; the optimizer state is not
    read. Latest complete step unless `step` is given."""
    root = orbax_root(job_or_orbax_dir)
    steps = complete_steps(root)
    if not steps:
        raise FileNotFoundError(f"{job_or_orbax_dir}: no complete Orbax checkpoint (orbax/<step>/) found")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"{root}: no complete checkpoint for step {step} (have {steps})")
    state_dir = os.path.abspath(os.path.join(root, str(step), "state"))
    ckptr = ocp.PyTreeCheckpointer()
    md = ckptr.metadata(state_dir)
    md = dict(getattr(md, "item_metadata", md))
    item = jax.tree.map(lambda m: np.zeros((), np.float32), {k: md[k] for k in ("params", "buffers", "ema")
                                                              if k in md})
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    weights = ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                                                   partial_restore=True))
    if "buffers" not in weights:  # a LoRA job: the frozen base comes from its load_path (or its seed)
        job = os.path.dirname(root)
        weights["buffers"] = sharding.to_host(lora_base(job_config(job), mesh=None))
    return step, weights


def job_config(job_dir: str):
    import json

    import ml_collections

    path = os.path.join(job_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{job_dir}: no config.json (not a training job directory)")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def lora_base(config, mesh=None):
    """A LoRA job's `buffers` (frozen base in the compute dtype + fixed buffers) as training made them
    (train_phases.fresh_state: the seed's init, `checkpoint.load_path` loaded over it)."""
    from cosmos_jax import optim
    from cosmos_jax.models import build
    from cosmos_jax.train_phases import fresh_state

    cfg = build.dit_config(config)
    if mesh is None:
        mesh = sharding.make_mesh((("data", 1), ("fsdp", 1), ("context", 1)), devices=jax.devices()[:1])
    tx = optim.make(config)
    _, abstract, sh = ts.layout(cfg, tx, mesh, config.seed)
    return fresh_state(config, cfg, tx, mesh, abstract, sh)["buffers"]
