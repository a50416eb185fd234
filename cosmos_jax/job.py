"""The job directory across reruns: where it is, what a rerun may change, and the files that must not go wrong.

Rerunning the training command resumes the job. Before anything is written, `check_rerun` compares the job's saved
`config.json` with the new config:
- a change that alters the train state's structure (the network, LoRA, a LoRA job's frozen base) is refused in one
  message naming each key with its old and new value, and the way out (a new job name, or the old value);
- run-control changes (max_iter, save cadence, logging, data paths, workers, samples, mesh, offload) are accepted
  and logged;
- any other change (learning rate, seed, conditioning, ...) is accepted with a warning: it changes the training
  from the resumed step on.
`write_config` writes `config.json` only after that check and keeps the earlier version as
`config.step<N>.json`. `trim_metrics` drops the metric rows written after the last complete checkpoint, so a
resumed job never has two rows for one step.
"""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger(__name__)

# Execution settings inside `model` that do not change any tensor of the state.
MODEL_EXECUTION = ("model.dtype", "model.attention_impl", "model.scan_blocks")
RUN_CONTROL_PREFIXES = ("max_iter", "log_every", "checkpoint.save_iter", "checkpoint.max_to_keep",
                        "checkpoint.export_pt", "checkpoint.export_max_to_keep",
                        "checkpoint.async_save", "checkpoint.concurrent_gb", "data.dataset_dir",
                        "data.val_dataset_dir", "data.latent_cache", "data.num_workers", "data.on_bad_sample",
                        "samples.", "mesh", "remat", "offload", *MODEL_EXECUTION)


class RerunConfigError(ValueError):
    """The new config cannot resume the job's saved state; the message names each key and the way out."""


def job_dir(config) -> str:
    root = os.environ.get("OUTPUT_ROOT", "checkpoints")
    return os.path.join(root, config.job.project, config.job.group, config.job.name)


def _flatten(d, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v, sort_keys=True)  # lists and tuples compare alike after a JSON round trip
    return out


def as_dict(config) -> dict:
    return json.loads(config.to_json_best_effort())


def structural(key: str, lora: bool) -> bool:
    if key.startswith("model.") and key not in MODEL_EXECUTION:
        return True
    if key.startswith("lora."):
        return True
    # A LoRA job's frozen base is not in its checkpoints: it is re-read from load_path (or re-made from the seed).
    return lora and key in ("checkpoint.load_path", "seed")


def run_control(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in RUN_CONTROL_PREFIXES)


def saved_config(jdir: str) -> dict | None:
    path = os.path.join(jdir, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_rerun(old: dict, new: dict, jdir: str, step: int) -> list[str]:
    """The accepted changes as 'key: old -> new' lines; raises RerunConfigError on structural ones."""
    a, b = _flatten(old), _flatten(new)
    lora = int(json.loads(a.get("lora.rank", "0"))) > 0
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    refused = [k for k in changed if structural(k, lora)]
    if refused:
        lines = [f"{k}: saved {a.get(k, '(absent)')}, now {b.get(k, '(absent)')}" for k in refused]
        raise RerunConfigError(
            f"{jdir} holds a checkpoint at step {step} made with a different network: " + "; ".join(lines)
            + ". Start a new job (--config.job.name=NEW_NAME), or rerun with the saved values "
            f"(see {os.path.join(jdir, 'config.json')}).")
    accepted = []
    for k in changed:
        line = f"{k}: {a.get(k, '(absent)')} -> {b.get(k, '(absent)')}"
        accepted.append(line)
        if run_control(k):
            log.info("rerun at step %d: %s", step, line)
        else:
            log.warning("rerun at step %d changes the training from here on: %s", step, line)
    return accepted


def write_config(jdir: str, config_dict: dict, step: int | None) -> None:
    """`config.json` (resolved), keeping a differing earlier version as `config.step<N>.json`."""
    path = os.path.join(jdir, "config.json")
    text = json.dumps(config_dict, indent=2, sort_keys=True)
    if os.path.isfile(path):
        with open(path) as f:
            old = f.read()
        if json.loads(old) == config_dict:
            return
        keep = os.path.join(jdir, f"config.step{step or 0:09d}.json")
        os.replace(path, keep if not os.path.exists(keep) else keep + ".1")
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def trim_metrics(jdir: str, step: int) -> int:
    """Drop `metrics.jsonl` rows of steps after `step` (written after the last complete checkpoint); returns the
    number dropped."""
    path = os.path.join(jdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    keep = [line for line in lines if json.loads(line)["step"] <= step]
    if len(keep) != len(lines):
        with open(path + ".tmp", "w") as f:
            f.writelines(keep)
        os.replace(path + ".tmp", path)
    return len(lines) - len(keep)
