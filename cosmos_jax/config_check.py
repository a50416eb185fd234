"""Checks of an experiment config before anything is built or written: one clear line per mistake.

`check(config, num_devices)` raises ConfigError naming the key, the value and what was expected; the CLI prints it
as one line and exits 1, before any state is built and before the job folder exists. `parse_flags` does the same
for mistakes in the `--config.a.b=value` overrides themselves (unknown keys with ml_collections' suggestion, values
that do not parse).
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np

from cosmos_jax import offload, offload_overlap, remat, sharding
from cosmos_jax.diffusion.conditioning import TRAIN_LOCATIONS
from cosmos_jax.models.attention import IMPLEMENTATIONS as ATTENTION
from cosmos_jax.weights import checkpoint, folder

TOKENIZERS = ("haar", "cosmos")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and what was expected."""


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _positive_int(c, key: str, minimum: int = 1) -> None:
    node, name = c, key
    for part in key.split("."):
        node = node[part]
    v = node
    _need(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum,
          f"config.{name}={v!r}: expected an integer >= {minimum}")


def check_mesh(mesh, num_devices: int) -> None:
    try:
        pairs = [tuple(p) for p in mesh]
        _need(all(len(p) == 2 for p in pairs), "")
    except (TypeError, ConfigError):
        raise ConfigError(f"config.mesh={mesh!r}: expected ordered (name, size) pairs over data, fsdp, context, "
                          "e.g. --config.mesh='((\"data\",1),(\"fsdp\",-1),(\"context\",1))'") from None
    try:
        sharding.resolve_mesh_shape(pairs, num_devices)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None


def check(c, num_devices: int) -> None:
    """Raise ConfigError on the first value that cannot work with `num_devices` devices."""
    _positive_int(c, "grad_accum")
    _need(isinstance(c.batch_size, int) and c.batch_size >= 0,
          f"config.batch_size={c.batch_size!r}: expected 0 (one sample per data-parallel device) or a positive "
          "global batch")
    for key in ("max_iter", "log_every", "checkpoint.save_iter", "checkpoint.max_to_keep", "data.num_workers",
                "data.num_frames", "model.num_blocks", "model.model_channels", "model.num_heads"):
        _positive_int(c, key)
    _positive_int(c, "checkpoint.export_max_to_keep", minimum=0)
    _positive_int(c, "checkpoint.concurrent_gb")
    _need(c.remat in remat.POLICIES, f"config.remat={c.remat!r}: expected one of {', '.join(remat.POLICIES)}")
    try:
        offload.check(c.offload, c.model.scan_blocks)
        offload_overlap.check(c.get("offload_overlap", False), c.offload, c.grad_accum, c.lora.rank > 0,
                              c.get("offload_prefetch", 1), c.get("offload_midblock_fetch", False), c.remat)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_mesh(c.mesh, num_devices)
    mesh = dict(sharding.resolve_mesh_shape([tuple(p) for p in c.mesh], num_devices))
    dp = mesh["data"] * mesh["fsdp"]
    _need(c.batch_size % dp == 0, f"config.batch_size={c.batch_size}: must be a multiple of the data-parallel size "
          f"data*fsdp={dp} of config.mesh={tuple(map(tuple, c.mesh))}")
    m = c.model
    _need(m.model_channels % m.num_heads == 0,
          f"config.model.model_channels={m.model_channels}: must be divisible by model.num_heads={m.num_heads}")
    if mesh["context"] > 1:
        _need(m.num_heads % mesh["context"] == 0, f"config.mesh context={mesh['context']}: must divide "
              f"model.num_heads={m.num_heads} (Ulysses attention splits the heads)")
    _need(m.dtype in DTYPES, f"config.model.dtype={m.dtype!r}: expected one of {', '.join(DTYPES)}")
    _need(m.attention_impl in ATTENTION,
          f"config.model.attention_impl={m.attention_impl!r}: expected one of {', '.join(ATTENTION)}")
    _need(c.tokenizer.name in TOKENIZERS, f"config.tokenizer.name={c.tokenizer.name!r}: expected one of "
          f"{', '.join(TOKENIZERS)}")
    d = c.data
    _need(d.on_bad_sample in ("error", "skip"), f"config.data.on_bad_sample={d.on_bad_sample!r}: expected 'error' "
          "or 'skip'")
    size = tuple(d.video_size)
    px = c.tokenizer.spatial_compression * m.patch_spatial
    _need(len(size) == 2 and all(isinstance(s, int) and s > 0 and s % px == 0 for s in size),
          f"config.data.video_size={size!r}: expected (height, width), each a multiple of {px} (tokenizer "
          f"{c.tokenizer.spatial_compression} x patch {m.patch_spatial})")
    tc = c.tokenizer.temporal_compression
    _need((d.num_frames - 1) % tc == 0, f"config.data.num_frames={d.num_frames}: expected 1 + a multiple of {tc} "
          "(the tokenizer's temporal compression), e.g. 57")
    n_views = len(d.view_keys)
    _need(0 <= d.sample_n_views <= n_views, f"config.data.sample_n_views={d.sample_n_views}: expected 1 .. "
          f"{n_views} (the number of data.view_keys), or 0 for all")
    cd = c.conditioning
    _need(cd.condition_location in TRAIN_LOCATIONS, f"config.conditioning.condition_location="
          f"{cd.condition_location!r}: training supports {', '.join(TRAIN_LOCATIONS)}")
    _need(0.0 <= cd.text_dropout_rate <= 1.0,
          f"config.conditioning.text_dropout_rate={cd.text_dropout_rate}: expected 0 .. 1")
    o = c.optim
    _need(o.lr > 0, f"config.optim.lr={o.lr}: expected > 0")
    _need(0 <= o.b1 < 1 and 0 <= o.b2 < 1, f"config.optim.b1={o.b1}, b2={o.b2}: expected each in [0, 1)")
    _need(o.warmup_steps >= 0, f"config.optim.warmup_steps={o.warmup_steps}: expected >= 0")
    lo = c.lora
    _need(isinstance(lo.rank, int) and lo.rank >= 0, f"config.lora.rank={lo.rank!r}: expected 0 (full fine-tune) "
          "or a positive rank")
    if lo.rank:
        _need(bool(lo.targets), "config.lora.rank > 0 needs config.lora.targets (upstream names, e.g. "
              "'(\"to_q\",\"to_k\",\"to_v\",\"to_out\",\"layer1\",\"layer2\")')")
        known = ("to_q", "to_k", "to_v", "to_out", "layer1", "layer2")
        bad = [t for t in lo.targets if str(t).split(".")[-1] not in known]
        _need(not bad, f"config.lora.targets: unknown target(s) {bad}; expected names ending in one of {known}")


_DID_YOU_MEAN = re.compile(r'Did you mean "([^"]+)" instead of "([^"]+)"')


def describe_flag_error(e: BaseException) -> str:
    """One line for an exception raised while parsing `--config...` overrides."""
    text = str(e).replace("\\n", "\n").strip("'\"")
    m = _DID_YOU_MEAN.search(text)
    if m:
        return f"unknown config key {m.group(2)!r}; did you mean {m.group(1)!r}?"
    first = text.splitlines()[0].strip("'\" ") if text else type(e).__name__
    if isinstance(e, KeyError | AttributeError):
        return f"unknown config key {first!r} (see configs/base.py for the keys)"
    return first


def parse_flags(argv):
    """absl `flags_parser` for the CLIs: config override mistakes end in one line and exit 1, not a traceback."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        cause = e.__cause__ or e.__context__ or e
        print(f"error: {describe_flag_error(cause) if cause is not e else e}", file=sys.stderr)
        sys.exit(1)
    except (KeyError, AttributeError, ValueError, TypeError) as e:
        print(f"error: {describe_flag_error(e)}", file=sys.stderr)
        sys.exit(1)


def check_load_path(path: str) -> str:
    """The base weights folder that `checkpoint.load_path` names, resolved: a converted folder (meta.json), or a
    job directory (its latest checkpoint's weights). Raises FileNotFoundError with the commands that make one."""
    path = path.rstrip("/")
    if folder.MARKER.marked(path):
        return path
    if (job := checkpoint.job_of(path)) is not None:
        return job
    if path.endswith((".pt", ".pth")) and os.path.isfile(path):
        hint = f"convert it once:\n  python -m converters.dit_to_orbax --src {path} --dst {path[:-3]}_orbax\n" \
               f"then set --config.checkpoint.load_path={path[:-3]}_orbax"
    else:
        hint = ("make them with\n"
                "  python scripts/download_checkpoints.py --checkpoint_dir checkpoints --model_types t2w,v2w\n"
                f"  python -m converters.dit_to_orbax --src <t2w_model.pt or v2w_model.pt> --dst {path}\n"
                "or set --config.checkpoint.load_path= to start from random weights")
    what = "an upstream .pt file, not converted weights" if path.endswith((".pt", ".pth")) and os.path.isfile(path) \
        else ("a folder without meta.json (an incomplete conversion?)" if os.path.isdir(path) else "no such path")
    raise FileNotFoundError(f"checkpoint.load_path={os.path.abspath(path)}: {what}; expected converted base weights "
                            f"(a folder with meta.json) or a job directory; {hint}")
