"""`python -m cosmos_jax.data.embed_captions --captions FILE --dataset DATA_ROOT/waymo --t5 DIR [--multiview]
[--batch_size 16]`

Caption text → T5 embedding pickles in the layout upstream's loader reads (docs/data-layout.md §1-§6).

Caption files (user-supplied; the NVIDIA toolkit's own files are not redistributable, docs/data-layout.md §6):

- **CSV, 2 rows × N columns, no header** (the toolkit's `waymo_caption.csv`, read upstream with
  `pd.read_csv(header=None)`): row 0 = clip ids, row 1 = captions. Each caption is the front camera's and already
  begins with the front prefix sentence ("The video is captured from a camera mounted on a car. The camera is facing
  forward. ..."). Embedded as is into `t5_xxl/pinhole_front/`. For `load_mv_emb=False` (the shipped experiment).
- **JSON dict keyed `<clip_id>_pinhole_<view>`** (the toolkit's `waymo_multiview_texts.json`), view one of front,
  front_left, front_right, side_left, side_right; the texts do **not** contain the prefix sentence.
  With `--multiview` every view's text is embedded as is into `t5_xxl/pinhole_<view>/` (for `load_mv_emb=True`,
  where the loader concatenates the prefix embedding and the caption embedding). Without `--multiview` only the
  front texts are used, with the front prefix sentence prepended (so they match the CSV convention).

A caption key matches a video `videos/pinhole_front/<stem>.mp4` when it equals the stem (or the stem without a
transfer1-style `_0` chunk suffix). Only clips with a front video are embedded; captions without a video are counted
and ignored; videos without a caption are reported and make the command exit 1 (the loader would fail on them).

Written (pickle protocol 4, each file atomically):

    t5_xxl/<view>/<clip_id>.pkl                 [float32 (L, D)]: upstream's `pickle.load(f)[0]`; L = real token
                                                count including `</s>` (at most 512); existing files are skipped
    cache/prefix_<view>.pkl                     float32 (L, D), raw: the view's prefix sentence (layout.py), the name
    cache/prefix_t5_embeddings_<view>.pkl       upstream's loader reads and the name its docs give; all 5 views,
                                                rewritten every run with the encoder given

The encoder comes from cosmos_jax/weights/t5.py's `load_encoder(--t5)`, which recognises the folder's contents.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from cosmos_jax.data import layout, pickles
from cosmos_jax.rig import PREFIX_SENTENCES, VIEW_KEYS

PICKLE_PROTOCOL = 4
FRONT = VIEW_KEYS[0]


class CaptionFileError(ValueError):
    """A caption file in neither accepted shape; the message names the file and what was expected."""


# --------------------------------------------------------------------------------------------------------------------
# Caption files

def read_csv_captions(path: str) -> dict[str, str]:
    """{clip_id: caption} from upstream's 2-row CSV (no header)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    if len(rows) != 2:
        hint = ""
        if len(rows) > 2 and all(len(r) == 2 for r in rows):
            hint = f" (this file looks like {len(rows)} rows x 2 columns: transpose it)"
        raise CaptionFileError(f"{path}: {len(rows)} non-empty rows, expected 2 rows (row 0 clip ids, row 1 "
                               f"captions) x N columns with no header{hint}")
    ids, caps = rows
    if len(ids) != len(caps):
        raise CaptionFileError(f"{path}: row 0 has {len(ids)} clip ids but row 1 has {len(caps)} captions")
    out: dict[str, str] = {}
    for col, (k, c) in enumerate(zip(ids, caps, strict=True)):
        k = k.strip()
        if not k or not c.strip():
            raise CaptionFileError(f"{path}: column {col}: empty clip id or caption")
        if k in out and out[k] != c:
            raise CaptionFileError(f"{path}: column {col}: clip id {k!r} appears twice with different captions")
        out[k] = c
    return out


def split_view_key(key: str) -> tuple[str, str] | None:
    """'<clip_id>_pinhole_<view>' -> (clip_id, 'pinhole_<view>'), or None."""
    for view in VIEW_KEYS:
        if key.endswith("_" + view) and len(key) > len(view) + 1:
            return key[: -len(view) - 1], view
    return None


def read_json_captions(path: str) -> dict[str, dict[str, str]]:
    """{clip_id: {view: caption}} from upstream's multiview JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise CaptionFileError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CaptionFileError(f"{path}: top level is {type(data).__name__}, expected an object keyed "
                               "'<clip_id>_pinhole_<view>'")
    out: dict[str, dict[str, str]] = {}
    bad = []
    for key, text in data.items():
        split = split_view_key(key)
        if split is None or not isinstance(text, str) or not text.strip():
            bad.append(key)
            continue
        out.setdefault(split[0], {})[split[1]] = text
    if bad:
        raise CaptionFileError(f"{path}: {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} not of the form "
                               f"'<clip_id>_pinhole_<view>': <non-empty text> with view in {list(VIEW_KEYS)}, e.g. "
                               f"{bad[:3]}")
    return out


def read_captions(path: str, multiview: bool) -> dict[str, dict[str, str]]:
    """{clip_id: {view: text to embed}} for the views this run writes (see the module docstring)."""
    if not os.path.isfile(path):
        raise CaptionFileError(f"{path}: caption file missing")
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"{"):
        per_clip = read_json_captions(path)
        if multiview:
            return per_clip
        return {c: {FRONT: f"{PREFIX_SENTENCES[FRONT]} {v[FRONT]}"} for c, v in per_clip.items() if FRONT in v}
    if multiview:
        raise CaptionFileError(f"{path}: --multiview needs per-view captions (a JSON object keyed "
                               "'<clip_id>_pinhole_<view>'); a 2-row CSV holds front captions only")
    return {c: {FRONT: t} for c, t in read_csv_captions(path).items()}


# --------------------------------------------------------------------------------------------------------------------
# Embeddings

def _as_LD(emb, what: str) -> np.ndarray:
    arr = np.asarray(emb, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{what}: encoder returned shape {arr.shape}, expected [L, D] with L >= 1")
    return np.ascontiguousarray(arr)


def _dump(path: str, obj) -> None:
    pickles.dump(path, obj, PICKLE_PROTOCOL)


# --------------------------------------------------------------------------------------------------------------------
# The command

def front_clips(dataset: str) -> list[str]:
    """Stems of the mp4 files in videos/pinhole_front (the clips upstream's loader lists)."""
    front = os.path.join(dataset, "videos", FRONT)
    if not os.path.isdir(front):
        raise FileNotFoundError(f"{front}: no such folder; run cosmos_jax.data.prepare_waymo first")
    return sorted(n[:-4] for n in os.listdir(front) if n.endswith(".mp4"))


def embed_dataset(captions: str, dataset: str, t5: str, multiview: bool = False, batch_size: int = 16,
                  encoder=None, progress: bool = True) -> dict:
    """Write the embeddings (module docstring); returns counts: written, skipped, no_caption (list of
    (clip, view)), unused_captions, prefixes. `encoder` overrides `t5_weights.load_encoder(t5)`."""
    from tqdm import tqdm

    from cosmos_jax.weights import t5 as t5_weights

    per_clip = read_captions(captions, multiview)
    clips = front_clips(dataset)
    views = VIEW_KEYS if multiview else (FRONT,)
    jobs, skipped, no_caption, used = [], 0, [], set()
    for clip in clips:
        key = clip if clip in per_clip else clip.removesuffix("_0")
        texts = per_clip.get(key, {})
        used.add(key)
        for view in views:
            if view not in texts:
                no_caption.append((clip, view))
            elif os.path.isfile(layout.caption_path(dataset, view, clip)):
                skipped += 1
            else:
                jobs.append((clip, view, texts[view]))
    enc = encoder if encoder is not None else t5_weights.load_encoder(t5)
    for view, emb in zip(VIEW_KEYS, enc.embed([PREFIX_SENTENCES[v] for v in VIEW_KEYS]), strict=True):
        arr = _as_LD(emb, f"prefix of {view}")
        for p in layout.prefix_paths(dataset, view):
            _dump(p, arr)
    batch_size = max(1, batch_size)
    with tqdm(total=len(jobs), unit="caption", disable=not progress, file=sys.stderr) as bar:
        for s in range(0, len(jobs), batch_size):
            chunk = jobs[s: s + batch_size]
            embs = enc.embed([t for _, _, t in chunk])
            for (clip, view, _), emb in zip(chunk, embs, strict=True):
                _dump(layout.caption_path(dataset, view, clip), [_as_LD(emb, f"caption of {clip} {view}")])
            bar.update(len(chunk))
    return {"written": len(jobs), "skipped": skipped, "no_caption": no_caption,
            "unused_captions": len(set(per_clip) - used), "prefixes": len(VIEW_KEYS)}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cosmos_jax.data.embed_captions",
                                 description="caption file -> T5 embedding pickles in the Cosmos layout")
    ap.add_argument("--captions", required=True, help="2-row CSV (ids, captions) or JSON keyed <clip>_pinhole_<view>")
    ap.add_argument("--dataset", required=True, help="dataset root with videos/pinhole_front, e.g. DATA_ROOT/waymo")
    ap.add_argument("--t5", required=True, help="text encoder folder (see cosmos_jax/weights/t5.py load_encoder)")
    ap.add_argument("--multiview", action="store_true", help="embed all five views (JSON captions; load_mv_emb)")
    ap.add_argument("--batch_size", type=int, default=16, help="captions per encoder call")
    ap.add_argument("--no_progress", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    t0 = time.time()
    try:
        r = embed_dataset(a.captions, a.dataset, a.t5, a.multiview, a.batch_size, progress=not a.no_progress)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {r['written']} caption embedding(s), skipped {r['skipped']} existing, {r['prefixes']} prefix "
          f"files (x2 names); {r['unused_captions']} caption(s) without a video ignored; {time.time() - t0:.1f} s")
    for clip, view in r["no_caption"]:
        print(f"MISSING {os.path.join(a.dataset, 'videos', view, clip + '.mp4')}: no caption for {clip!r} "
              f"({view}) in {a.captions}")
    return 1 if r["no_caption"] else 0


if __name__ == "__main__":
    sys.exit(main())
