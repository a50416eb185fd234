"""The latent cache: tokenizer latents of every (clip, window, view) and each clip's text, in ArrayRecord files that
grain reads, so training skips video decoding and the tokenizer.

    python -m cosmos_jax.data.encode_latents --config=configs/waymo.py --out CACHE [--window_stride K]

Layout: CACHE/index.json (format, view keys, clips, windows, shapes, the data settings it was made with),
CACHE/latents.array_record (one record per window: RAW latents of all views [V, T, h, w, C] + fps),
CACHE/text.array_record (one record per clip: every view's padded text [V, S, D] as the data settings compose it).
Records are `np.savez` bytes read with `allow_pickle=False`: nothing in a cache can run code. Raw latents are
stored (normalised when read by `LatentNorm`, with the current tokenizer statistics), so a cache survives a change
of normalisation (edm2's raw/final split). Windows must be encoded separately: the tokenizer is causal per chunk,
so a window cannot be cut out of a longer encoding.

Training reads a cache when `data.latent_cache` is set, with the same view sampling, maps and sample format as the
video source, except `latents` [V, T, h, w, C] replaces `video`.
"""

from __future__ import annotations

import io
import json
import os

import grain
import numpy as np

from cosmos_jax.data.dataset import DataSpec, choose_views, make_sample
from cosmos_jax.models.tokenizer import LatentNorm

FORMAT = "cosmos_jax.latent_cache/1"
LATENTS, TEXT, INDEX = "latents.array_record", "text.array_record", "index.json"


def pack(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def unpack(record: bytes, path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(record), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise ValueError(f"{path}: unreadable cache record ({type(e).__name__}: {e})") from e


def spec_fields(spec: DataSpec) -> dict:
    """The data settings a cache depends on (checked when training reads it)."""
    return {"view_keys": list(spec.view_keys), "num_frames": spec.num_frames, "video_size": list(spec.video_size),
            "sequence_interval": spec.sequence_interval, "load_mv_emb": spec.load_mv_emb,
            "text_tokens": spec.text_tokens, "embed_dim": spec.embed_dim}


class LatentCacheSource:
    """Random access over a cache with the video source's `sample(index, rng)` semantics."""

    def __init__(self, path: str, spec: DataSpec, norm: LatentNorm):
        """`norm`: the tokenizer's raw -> final normalisation (`Tokenizer.norm`); no tokenizer network is needed."""
        self.path, self.spec = path, spec
        index_path = os.path.join(path, INDEX)
        if not os.path.isfile(index_path):
            raise FileNotFoundError(f"data.latent_cache={path}: no {INDEX}; make the cache with "
                                    "python -m cosmos_jax.data.encode_latents --config=... --out " + path)
        with open(index_path) as f:
            self.index = json.load(f)
        if self.index.get("format") != FORMAT:
            raise ValueError(f"{index_path}: format {self.index.get('format')!r}, expected {FORMAT!r}")
        mismatch = {k: (self.index["data"].get(k), v) for k, v in spec_fields(spec).items()
                    if self.index["data"].get(k) != v}
        if mismatch:
            raise ValueError(f"{index_path}: made with other data settings (cache, config): {mismatch}")
        self.windows = [tuple(w) for w in self.index["windows"]]
        self.skipped_clips: list[str] = []
        self._latents = grain.sources.ArrayRecordDataSource([os.path.join(path, LATENTS)])
        self._text = grain.sources.ArrayRecordDataSource([os.path.join(path, TEXT)])
        if len(self._latents) != len(self.windows) or len(self._text) != len(self.index["clips"]):
            raise ValueError(f"{path}: record counts ({len(self._latents)} windows, {len(self._text)} clips) do not "
                             f"match {INDEX} ({len(self.windows)}, {len(self.index['clips'])}): incomplete cache?")
        self.norm = norm

    def __len__(self) -> int:
        return len(self.windows)

    def choose_views(self, rng: np.random.Generator) -> np.ndarray:
        return choose_views(self.spec, rng)

    def sample(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        views = self.choose_views(rng)
        clip_i, start = self.windows[index]
        lat = unpack(self._latents[index], os.path.join(self.path, LATENTS))
        txt = unpack(self._text[clip_i], os.path.join(self.path, TEXT))
        return make_sample(self.spec, views, index, lat["fps"], txt["text"][views], txt["text_mask"][views],
                           latents=self.norm.encode_latents(lat["latents"][views].astype(np.float32)))
