"""Multiview clips in the Cosmos layout as a random-access source of (clip, start-frame) windows.

Semantics of upstream's `dataset_multiview.Dataset` (docs/upstream.md §2):
- clips are the video files of `videos/<view_keys[0]>/`; every view has a file of the same name;
- one window per start frame (every `start_frame_interval`), frames start, start + sequence_interval, ...;
  windows sorted by (clip, start);
- view 0 (the front) always, plus `sample_n_views - 1` other views drawn without replacement, sorted;
- text: with `load_mv_emb` each view is cat(prefix, caption); without it the front view uses its caption only and
  every other view only its prefix; each padded or truncated to 512 tokens;
- `caption_view_idx_map` gives each view its row of the network's view-embedding table;
- frames resized (antialiased bilinear, no crop) to `video_size` while they are decoded (`video.read_frames`).
The random view choice is a function of the generator passed in, which the pipeline derives from (seed, global
position in the stream), so the stream does not depend on how many processes read it.

A sample (numpy) is built by `make_sample` alone, for this source and the latent cache (SAMPLE_FIELDS).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading

import numpy as np

from cosmos_jax.data import pickles, video

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm")
log = logging.getLogger(__name__)


class BadSampleError(ValueError):
    """A window whose files cannot produce a sample; the message names the file and what was expected."""


@dataclasses.dataclass(frozen=True)
class DataSpec:
    dataset_dir: str
    view_keys: tuple[str, ...]
    num_frames: int
    video_size: tuple[int, int]
    sample_n_views: int
    caption_view_idx_map: dict[int, int]
    load_mv_emb: bool
    sequence_interval: int
    start_frame_interval: int
    on_bad_sample: str
    text_tokens: int
    embed_dim: int

    @classmethod
    def from_config(cls, config, dataset_dir: str | None = None) -> DataSpec:
        d = config.data
        if d.on_bad_sample not in ("error", "skip"):
            raise ValueError(f"data.on_bad_sample={d.on_bad_sample!r}: expected 'error' or 'skip'")
        idx_map = {int(k): int(v) for k, v in dict(d.caption_view_idx_map).items()}
        return cls(dataset_dir=dataset_dir or d.dataset_dir, view_keys=tuple(d.view_keys),
                   num_frames=int(d.num_frames), video_size=tuple(d.video_size),
                   sample_n_views=int(d.sample_n_views), caption_view_idx_map=idx_map,
                   load_mv_emb=bool(d.load_mv_emb), sequence_interval=int(d.sequence_interval),
                   start_frame_interval=int(d.start_frame_interval), on_bad_sample=d.on_bad_sample,
                   text_tokens=int(d.text_tokens), embed_dim=int(config.model.crossattn_emb_channels))

    @property
    def num_views(self) -> int:
        return self.sample_n_views if self.sample_n_views > 0 else len(self.view_keys)

    @property
    def span(self) -> int:
        """Frames a window covers."""
        return (self.num_frames - 1) * self.sequence_interval + 1


def list_clips(spec: DataSpec) -> list[str]:
    """Video file names in `videos/<front view>/` (sorted)."""
    front = os.path.join(spec.dataset_dir, "videos", spec.view_keys[0])
    if not os.path.isdir(front):
        raise FileNotFoundError(f"{front}: no such folder; expected the Cosmos layout "
                                f"videos/<view>/<clip>.mp4 under data.dataset_dir={spec.dataset_dir!r}")
    return sorted(n for n in os.listdir(front) if n.lower().endswith(VIDEO_EXTENSIONS) and not n.startswith("."))


def choose_views(spec: DataSpec, rng: np.random.Generator) -> np.ndarray:
    """View 0 (the front) always, plus sample_n_views - 1 others without replacement, sorted (upstream)."""
    n_all = len(spec.view_keys)
    if spec.sample_n_views <= 0:
        return np.arange(n_all, dtype=np.int32)
    if spec.sample_n_views > n_all:
        raise ValueError(f"data.sample_n_views={spec.sample_n_views} > {n_all} view_keys")
    others = rng.choice(np.arange(1, n_all), spec.sample_n_views - 1, replace=False)
    return np.concatenate([[0], np.sort(others)]).astype(np.int32)


# The sample schema: key -> (dtype, shape). `video` (this source) or `latents` (the latent cache) is the picture.
SAMPLE_FIELDS = {
    "video": (np.uint8, "[V, F, H, W, 3]"),
    "latents": (np.float32, "[V, T, h, w, C] final (normalised) tokenizer latents"),
    "text": (np.float32, "[V, S, D] padded token embeddings"),
    "text_mask": (np.float32, "[V, S] 1 for real tokens"),
    "view_idx": (np.int32, "[V] rows of the network's view-embedding table (caption_view_idx_map)"),
    "view_choice": (np.int32, "[V] indices into view_keys"),
    "fps": (np.float32, "[]"),
    "frame_repeat": (np.float32, "[V] (0: training clips are not repeated)"),
    "window": (np.int64, "[] the window's index"),
    "skipped": (np.int32, "[] bad clips passed over to reach it"),
}


def make_sample(spec: DataSpec, views: np.ndarray, window: int, fps: float, text_VSD: np.ndarray,
                text_mask_VS: np.ndarray, skipped: int = 0, **picture: np.ndarray) -> dict[str, np.ndarray]:
    """One sample in the schema of SAMPLE_FIELDS (scalars as numpy scalars); `picture` is video=... or
    latents=...."""
    (name, value), = picture.items()
    out = {name: value, "text": text_VSD, "text_mask": text_mask_VS,
           "view_idx": [spec.caption_view_idx_map.get(int(v), int(v)) for v in views], "view_choice": views,
           "fps": fps, "frame_repeat": np.zeros(len(views)), "window": window, "skipped": skipped}
    return {k: np.asarray(v, SAMPLE_FIELDS[k][0])[()] for k, v in out.items()}


def window_starts(num_frames_in_clip: int, spec: DataSpec) -> range:
    return range(0, max(0, num_frames_in_clip - spec.span + 1), spec.start_frame_interval)


class MultiviewWindows:
    """Random access over every (clip, start) window of a dataset folder."""

    def __init__(self, spec: DataSpec):
        self.spec = spec
        self.skipped_clips: list[str] = []
        clips = list_clips(spec)
        self.prefixes = [self._read_prefix(v) for v in spec.view_keys]
        self.windows: list[tuple[str, int]] = []
        for clip in clips:
            path = os.path.join(spec.dataset_dir, "videos", spec.view_keys[0], clip)
            try:
                n = video.probe(path, count_frames=False).num_frames or video.probe(path).num_frames
            except video.BadVideoError as e:
                if spec.on_bad_sample == "error":
                    raise
                log.warning("skipping clip: %s", e)
                self.skipped_clips.append(clip)
                continue
            self.windows.extend((clip, s) for s in window_starts(n, spec))
        if not self.windows:
            raise ValueError(f"{spec.dataset_dir}: no window of {spec.num_frames} frames (interval "
                             f"{spec.sequence_interval}) in any clip of videos/{spec.view_keys[0]}/")
        # windows are sorted by clip: the index just past each clip's last window
        self._clip_end = {clip: i + 1 for i, (clip, _) in enumerate(self.windows)}
        self._bad: dict[str, str] = {}  # clip -> why (on_bad_sample='skip'); grain reads from several threads
        self._bad_lock = threading.Lock()

    def _read_prefix(self, view: str) -> np.ndarray | None:
        path = pickles.find_existing(pickles.prefix_candidates(self.spec.dataset_dir, view))
        if path is None:
            front_only = not self.spec.load_mv_emb and view == self.spec.view_keys[0]
            if front_only:
                return None  # the front view uses its caption alone
            raise FileNotFoundError(f"{pickles.prefix_candidates(self.spec.dataset_dir, view)[0]}: prefix "
                                    f"embedding of view {view} missing (also looked for prefix_t5_embeddings_*)")
        return pickles.read_embedding(path, self.spec.embed_dim)

    def __len__(self) -> int:
        return len(self.windows)

    def choose_views(self, rng: np.random.Generator) -> np.ndarray:
        return choose_views(self.spec, rng)

    def text(self, view_i: int, stem: str) -> np.ndarray:
        """The view's token embeddings [L, D] as the data settings compose them (before padding)."""
        return self._text(view_i, stem)

    def _text(self, view_i: int, stem: str) -> np.ndarray:
        spec = self.spec
        view = spec.view_keys[view_i]
        parts = []
        if spec.load_mv_emb:
            parts.append(self.prefixes[view_i])
        if spec.load_mv_emb or view_i == 0:
            cands = pickles.caption_candidates(spec.dataset_dir, view, stem)
            path = pickles.find_existing(cands)
            if path is None:
                raise BadSampleError(f"{cands[0]}: caption embedding missing")
            parts.append(pickles.read_embedding(path, spec.embed_dim))
        else:
            parts.append(self.prefixes[view_i])
        return np.concatenate(parts, axis=0)

    def load_window(self, index: int, views: np.ndarray, skipped: int = 0) -> dict[str, np.ndarray]:
        """One sample for window `index` with the given view indices (raises BadSampleError naming the file);
        `skipped`: the bad clips passed over to reach it."""
        spec = self.spec
        clip, start = self.windows[index]
        stem = os.path.splitext(clip)[0]
        frame_ids = list(range(start, start + spec.span, spec.sequence_interval))
        frames, texts, masks, fps = [], [], [], None
        for vi in views:
            path = os.path.join(spec.dataset_dir, "videos", spec.view_keys[vi], clip)
            try:
                frames.append(video.read_frames(path, frame_ids, spec.video_size))
                if fps is None:
                    fps = video.probe(path, count_frames=False).fps
            except video.BadVideoError as e:
                raise BadSampleError(f"{e} (window start {start}, {spec.num_frames} frames)") from e
            try:
                emb, mask = pickles.pad_tokens(self._text(int(vi), stem), spec.text_tokens)
            except (pickles.BadEmbeddingError, pickles.UnsafePickleError, OSError) as e:
                raise BadSampleError(str(e)) from e
            texts.append(emb)
            masks.append(mask)
        return make_sample(spec, views, index, fps, np.stack(texts), np.stack(masks), skipped,
                           video=np.stack(frames))

    @property
    def bad_clips(self) -> dict[str, str]:
        """Clips found bad while sampling (clip -> the error), with on_bad_sample='skip'."""
        with self._bad_lock:
            return dict(self._bad)

    def _mark_bad(self, clip: str, error: str) -> None:
        with self._bad_lock:
            if clip in self._bad:
                return
            self._bad[clip] = error
        log.warning("skipping clip %s from now on (every window): %s", clip, error)

    def _first_good(self, index: int) -> tuple[int | None, int]:
        """The first window at or after `index` (cyclically, in window order) whose clip is not known bad, and
        how many bad clips lie before it; None when every clip is bad."""
        n, i = len(self.windows), index % len(self.windows)
        with self._bad_lock:
            bad = set(self._bad)
        for passed in range(len(self._clip_end) + 1):
            clip = self.windows[i][0]
            if clip not in bad:
                return i, passed
            i = self._clip_end[clip] % n
        return None, passed

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Window `index` with randomly chosen views.

        With on_bad_sample='skip' a window that fails marks its whole clip bad (warned once per clip) and is
        replaced by the first window after it, in window order, of a clip not known bad: a function of (index, bad
        clips), so the stream stays reproducible. `skipped` counts the bad clips passed over (0: window `index`
        itself). Only when every clip is bad does it raise.
        """
        views = self.choose_views(rng)
        if self.spec.on_bad_sample == "error":
            return self.load_window(index, views)
        while True:
            i, passed = self._first_good(index)
            if i is None:
                last = list(self.bad_clips.items())[-1]
                raise BadSampleError(f"every clip ({len(self._clip_end)}) is bad; last: {last[0]}: {last[1]}")
            try:
                return self.load_window(i, views, passed)
            except BadSampleError as e:
                self._mark_bad(self.windows[i][0], str(e))
