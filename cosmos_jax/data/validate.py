"""`python -m cosmos_jax.data.validate --config=configs/waymo.py [--config.data.dataset_dir=DIR]`

Walks every clip and view of a dataset folder, decodes every video, reads every embedding the config will use,
reports every problem with its file, prints a summary (clips, windows, views, frames, fps, sizes, embeddings) and
exits 1 if anything is wrong. The held-out set that training validates on (data.val_dataset_dir, else
<dataset_dir>/heldout when it has videos/) is checked the same way, its problems prefixed with its folder.
"""

from __future__ import annotations

import collections
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from cosmos_jax.data import dataset, pickles, video

EMBEDDING_ERRORS = (pickles.BadEmbeddingError, pickles.UnsafePickleError, OSError)


def validate(spec: dataset.DataSpec, out=sys.stdout, label: str = "") -> list[str]:
    """Every problem found (empty = valid), each starting with `label`; prints the report to `out`."""
    problems: list[str] = []
    info: list[str] = []
    root = spec.dataset_dir
    try:
        clips = dataset.list_clips(spec)
    except FileNotFoundError as e:
        print(f"PROBLEM {label}{e}", file=out)
        return [f"{label}{e}"]
    front_dir = os.path.join(root, "videos", spec.view_keys[0])
    others = sorted(set(os.listdir(front_dir)) - set(clips))
    problems += [f"{os.path.join(front_dir, n)}: not a video file (upstream's loader would read it as a clip)"
                 for n in others if not n.startswith(".")]
    if not clips:
        problems.append(f"{front_dir}/: no video files (the clips are the videos of the first view)")
    empty_views = set()
    for view in spec.view_keys[1:]:
        problem = _empty_view_problem(root, view, clips)
        if problem:
            empty_views.add(view)  # one problem for the folder rather than one per clip
            problems.append(problem)
    for view in spec.view_keys:
        path = pickles.find_existing(pickles.prefix_candidates(root, view))
        needed = spec.load_mv_emb or view != spec.view_keys[0]
        if path is None and needed:
            problems.append(f"{pickles.prefix_candidates(root, view)[0]}: prefix embedding missing")
        elif path is not None:
            try:
                pickles.read_embedding(path, spec.embed_dim)
            except EMBEDDING_ERRORS as e:
                problems.append(str(e))
    fps_seen, sizes, frames = collections.Counter(), collections.Counter(), collections.Counter()
    per_view = {v: collections.Counter() for v in spec.view_keys}
    windows, emb_read, emb_missing = 0, 0, 0
    for clip in clips:
        stem = os.path.splitext(clip)[0]
        counts = {}
        for vi, view in enumerate(spec.view_keys):
            if spec.load_mv_emb or vi == 0:  # the caption is read whether or not the video decodes
                cands = pickles.caption_candidates(root, view, stem)
                emb_path = pickles.find_existing(cands)
                if emb_path is None:
                    emb_missing += 1
                    problems.append(f"{cands[0]}: caption embedding missing")
                else:
                    emb_read += 1
                    try:
                        pickles.read_embedding(emb_path, spec.embed_dim)
                    except EMBEDDING_ERRORS as e:
                        problems.append(str(e))
            if view in empty_views:
                continue
            path = os.path.join(root, "videos", view, clip)
            try:
                vinfo = video.probe(path)
            except video.BadVideoError as e:
                problems.append(str(e))
                continue
            counts[view] = vinfo.num_frames
            fps_seen[round(vinfo.fps, 3)] += 1
            sizes[f"{view} {vinfo.width}x{vinfo.height}"] += 1
            frames[vinfo.num_frames] += 1
            per_view[view][vinfo.num_frames] += 1
            if vinfo.num_frames < spec.span:
                problems.append(f"{path}: {vinfo.num_frames} frames, fewer than a window needs ({spec.span})")
        if len(set(counts.values())) > 1:
            problems.append(f"{clip}: views have different frame counts {counts}")
        if counts:
            windows += len(dataset.window_starts(min(counts.values()), spec))
    stems = {os.path.splitext(c)[0] for c in clips}
    n_extra = 0
    for view in spec.view_keys:
        emb_dir = os.path.join(root, "t5_xxl", view)
        if os.path.isdir(emb_dir):
            extra = sorted(n for n in os.listdir(emb_dir) if os.path.splitext(n)[0] not in stems)
            n_extra += len(extra)
            info += [f"extra embedding without a video: {os.path.join(emb_dir, n)}" for n in extra]
    print(f"dataset {root}", file=out)
    print(f"  clips {len(clips)}, windows {windows} ({spec.num_frames} frames, interval {spec.sequence_interval}), "
          f"views {len(spec.view_keys)} ({', '.join(spec.view_keys)}), sampled per window {spec.num_views}", file=out)
    print(f"  frames per video {dict(sorted(frames.items()))}, fps {dict(fps_seen)}", file=out)
    print(f"  frames per view {{{', '.join(f'{v}: {dict(sorted(c.items()))}' for v, c in per_view.items())}}}",
          file=out)
    print(f"  sizes {dict(sorted(sizes.items()))} -> resized to {spec.video_size[0]}x{spec.video_size[1]} (HxW)",
          file=out)
    print(f"  text: {'prefix + caption per view' if spec.load_mv_emb else 'front caption, prefixes elsewhere'}, "
          f"width {spec.embed_dim}", file=out)
    print(f"  caption embeddings: {emb_read} read, {emb_missing} missing, {n_extra} extra", file=out)
    for line in info:
        print(f"  note: {line}", file=out)
    problems = [f"{label}{p}" for p in problems]
    for p in problems:
        print(f"PROBLEM {p}", file=out)
    print(f"{'OK' if not problems else f'{len(problems)} problem(s)'}", file=out)
    return problems


def _empty_view_problem(root: str, view: str, clips: list[str]) -> str | None:
    """A view folder that holds none of the clips' videos (every window would fail), as one problem."""
    if not clips:
        return None
    d = os.path.join(root, "videos", view)
    if not os.path.isdir(d):
        return f"{d}/: no such folder (expected one video per clip, {len(clips)} clips)"
    names = set(os.listdir(d))
    if names & set(clips):
        return None
    vids = sorted(n for n in names if n.lower().endswith(dataset.VIDEO_EXTENSIONS) and not n.startswith("."))
    if not vids:
        return f"{d}/: no video files (expected one per clip, {len(clips)} clips)"
    return (f"{d}/: none of the {len(clips)} clips has a video here ({len(vids)} other video file(s), e.g. "
            f"{vids[0]}; names must match the first view's)")


def heldout_dir(config) -> str | None:
    """The held-out folder training validates on (as cosmos_jax.validation.heldout_dir picks it; not imported
    here, it pulls in the model), or None when training would validate on its own dataset."""
    d = config.data.get("val_dataset_dir", "") or ""
    if d:
        return d
    sub = os.path.join(config.data.dataset_dir, "heldout")
    return sub if os.path.isdir(os.path.join(sub, "videos")) else None


def validate_config(config, out=sys.stdout) -> list[str]:
    """The training dataset and the held-out set of a config; held-out problems carry the held-out folder."""
    problems = validate(dataset.DataSpec.from_config(config), out)
    held = heldout_dir(config)
    if held is None:
        print("held-out: none (no data.val_dataset_dir, no <dataset_dir>/heldout/videos): training validates on "
              "its own windows", file=out)
        return problems
    label = f"held-out {held}: "
    if not os.path.isdir(os.path.join(held, "videos")):
        msg = f"{label}no videos/ folder (data.val_dataset_dir): the validation loss and samples would be off"
        print(f"PROBLEM {msg}", file=out)
        return problems + [msg]
    return problems + validate(dataset.DataSpec.from_config(config, dataset_dir=held), out, label)


def main(argv):
    del argv
    config = flags.FLAGS.config
    if config is None:
        raise app.UsageError("--config is required")
    problems = validate_config(config)
    print(f"{'OK' if not problems else f'{len(problems)} problem(s) in all'}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "experiment config file[:arg]", lock_config=True)
    app.run(main)
