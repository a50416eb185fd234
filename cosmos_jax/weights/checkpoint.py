"""A training job's checkpoint: Orbax steps of the train state and data iterator, `.pt` exports, free-space checks.

Job directory (docs/formats.md): `config.json`, `orbax/<step>/` (CheckpointManager: state = step, params, buffers,
optimizer, EMA; data = the grain iterator state; meta = seed and step), `checkpoints/iter_{N:09d}_{reg,ema}_model.pt`
(written by cosmos_jax/weights/export.py). Orbax writes each step to a temporary folder and renames it when
complete, so a run killed at any moment (during a save included) resumes from the last complete step. `.pt` files
are written to a temporary name, then renamed.

`read_weights` returns the weights as stored: a LoRA job stores no `buffers` (cosmos_jax/weights/dit.py's
`restore_job_weights` re-makes its frozen base).
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from cosmos_jax.weights.tree import orbax_metadata


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


def ensure_space(folder: str, needed: int, what: str, advice: str, error: type[OSError] = OSError) -> None:
    """Refuse before writing: `error` naming the folder, what was to be written, the bytes needed and free, and
    `advice` (what to do), when `folder`'s file system has less than `needed` bytes free."""
    free = free_bytes(folder)
    if free < needed:
        raise error(f"not enough space in {folder} for {what}: needs {needed / 1e9:.2f} GB, {free / 1e9:.2f} GB free "
                    f"(No space left on device){advice}")


def last_checkpoint_advice(last_step: int | None) -> str:
    """The advice of a refused save: the last complete checkpoint and how to go on."""
    return (f"; the last complete checkpoint is {f'step {last_step}' if last_step is not None else 'none'}. Free "
            "space or raise checkpoint.save_iter / lower checkpoint.max_to_keep, then rerun to resume.")


def export_paths(out_dir: str, step: int) -> tuple[str, str]:
    """The reg and EMA `.pt` files of a step's export."""
    return (os.path.join(out_dir, f"iter_{step:09d}_reg_model.pt"),
            os.path.join(out_dir, f"iter_{step:09d}_ema_model.pt"))


def job_of(path: str) -> str | None:
    """The training job `path` names (the job directory itself or its `orbax/` folder), or None."""
    path = path.rstrip("/")
    job = os.path.dirname(path) if os.path.basename(path) == "orbax" else path
    return job if os.path.isfile(os.path.join(job, "config.json")) and os.path.isdir(os.path.join(job, "orbax")) \
        else None


def job_config(job: str) -> ml_collections.ConfigDict:
    """The resolved config a job saved (its `config.json`)."""
    path = os.path.join(job, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{job}: no config.json (not a training job directory)")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def orbax_root(job_or_orbax_dir: str) -> str:
    """The folder of a job's Orbax steps: `<job>/orbax`, or the given folder itself when it is that folder."""
    sub = os.path.join(job_or_orbax_dir, "orbax")
    return sub if os.path.isdir(sub) or not os.path.isdir(job_or_orbax_dir) else job_or_orbax_dir


def complete_steps(job_or_orbax_dir: str) -> list[int]:
    """Steps with a complete Orbax checkpoint (Orbax writes `<step>.orbax-checkpoint-tmp-*` and renames)."""
    root = orbax_root(job_or_orbax_dir)
    return sorted(int(n) for n in os.listdir(root) if n.isdigit()) if os.path.isdir(root) else []


def remove_partial(job: str) -> list[str]:
    """Delete Orbax temporary folders left by a failed or killed save; returns what was removed."""
    root = os.path.join(job, "orbax")
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
                     last_checkpoint_advice(self.last_complete()), SaveError)
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


def read_weights(job_or_orbax_dir: str, step: int | None = None) -> tuple[int, dict]:
    """(step, {"params", "buffers", "ema"}) of a job's checkpoint as stored, as host numpy trees (a LoRA job has no
    "buffers"); the optimizer state is not read. Latest complete step unless `step` is given."""
    root = orbax_root(job_or_orbax_dir)
    steps = complete_steps(root)
    if not steps:
        raise FileNotFoundError(f"{job_or_orbax_dir}: no complete Orbax checkpoint (orbax/<step>/) found")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"{root}: no complete checkpoint for step {step} (have {steps})")
    state_dir = os.path.abspath(os.path.join(root, str(step), "state"))
    ckptr = ocp.PyTreeCheckpointer()
    md = orbax_metadata(state_dir, ckptr)
    item = jax.tree.map(lambda m: np.zeros((), np.float32), {k: md[k] for k in ("params", "buffers", "ema")
                                                              if k in md})
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    return step, ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                                                      partial_restore=True))
