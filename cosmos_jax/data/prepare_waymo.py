"""`python -m cosmos_jax.data.prepare_waymo --input DIR --output DATA_ROOT/waymo [--workers N] [--resize WxH]
[--crf 18] [--deterministic]`

Waymo Open Dataset v1 (Perception) segment files → the Cosmos Single2MultiView layout, without TensorFlow
(docs/data-layout.md §1, §7, §8 and "Rig calibration file").

Input: every `*.tfrecord` directly in --input, one per segment (`segment-<id>_with_camera_labels.tfrecord`, possibly
with the console's `individual_files_training_` / `individual_files_validation_` prefix). For each segment the
`Frame` records are parsed in record order (`cosmos_jax.data.waymo_proto`; lidar and labels are skipped unread), the
JPEG of each of the five cameras is decoded (Pillow) and streamed into its encoder, and this is written:

    videos/pinhole_<view>/<clip_id>.mp4   H.264 (libx264, yuv420p), 10 fps, keyframe every 10 frames, crf --crf;
                                          native size (1920x1280 front trio, 1920x886 sides) unless --resize WxH,
                                          which applies the loader's antialiased bilinear resize
                                          (`cosmos_jax.data.video.resize`) to every view
    rig/<clip_id>.json                    the cameras: size of the stored video, intrinsics {fx, fy, cx, cy} in its
                                          pixels (scaled with --resize), distortion [k1, k2, p1, p2, k3] (Waymo's
                                          intrinsic order f_u, f_v, c_u, c_v, k1, k2, p1, p2, k3), camera_to_vehicle
                                          (Waymo's extrinsic, 4x4 row-major)

clip_id = `Frame.context.name` of the first record (fallback: the file stem without the console prefix, `segment-`
and `_with_camera_labels`). Nothing is written to `t5_xxl/` or `cache/` (see `cosmos_jax.data.embed_captions`).

Resumable: a segment whose six outputs all exist is skipped after reading its first record. Every file is written
to `<output>/.partial/` and renamed into place when complete, so a killed run never leaves a partial file that looks
finished (and none in `videos/pinhole_front/`, which the loader lists). Segments run in parallel over --workers
processes. A segment that fails (bad CRC, truncated file, malformed record, missing camera) is reported with its
file and byte offset, its outputs are not written, the other segments are still prepared, and the command exits 1.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import glob
import io
import itertools
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

from cosmos_jax.data import layout, video
from cosmos_jax.data.layout import WAYMO_CAMERA_ENUM, WAYMO_SOURCE_NAMES
from cosmos_jax.data.tfrecord import iter_records
from cosmos_jax.data.waymo_proto import Context, Frame, ProtoError, parse_frame
from cosmos_jax.rig import VIEW_KEYS

ENUM_TO_VIEW = {WAYMO_CAMERA_ENUM[src]: view for view, src in WAYMO_SOURCE_NAMES.items()}
FILE_PREFIXES = ("individual_files_training_", "individual_files_validation_")
GOP = 10
PARTIAL_DIR = ".partial"


class SegmentError(ValueError):
    """A segment that cannot be prepared; the message names the file (and the byte offset of the record)."""


@dataclasses.dataclass(frozen=True)
class SegmentResult:
    path: str
    clip_id: str
    frames: int
    skipped: bool
    seconds: float


def clip_id_from_filename(path: str) -> str:
    stem = os.path.basename(path).removesuffix(".tfrecord")
    for p in FILE_PREFIXES:
        stem = stem.removeprefix(p)
    return stem.removeprefix("segment-").removesuffix("_with_camera_labels")


def list_segments(input_dir: str) -> list[str]:
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f"{input_dir}: no such folder (expected Waymo v1 segment *.tfrecord files)")
    return sorted(glob.glob(os.path.join(input_dir, "*.tfrecord")))


def output_paths(root: str, clip_id: str) -> list[str]:
    return [layout.video_path(root, v, clip_id) for v in VIEW_KEYS] + [layout.rig_path(root, clip_id)]


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H); both positive and even (yuv420p)."""
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--resize {text!r}: expected WIDTHxHEIGHT, e.g. 1024x576") from None
    if w <= 0 or h <= 0 or w % 2 or h % 2:
        raise ValueError(f"--resize {text!r}: width and height must be positive and even (yuv420p)")
    return w, h


def rig_json(path: str, ctx: Context, stored: dict[str, tuple[int, int]],
             native: dict[str, tuple[int, int]]) -> dict:
    """The rig calibration file for the stored videos (sizes (W, H) per view)."""
    by_name = {c.name: c for c in ctx.camera_calibrations}
    cams = {}
    for view in VIEW_KEYS:
        src = WAYMO_SOURCE_NAMES[view]
        cal = by_name.get(WAYMO_CAMERA_ENUM[src])
        if cal is None:
            raise SegmentError(f"{path}: Frame.context has no camera_calibrations entry for {src} "
                               f"(name={WAYMO_CAMERA_ENUM[src]}); found {sorted(by_name)}")
        if len(cal.intrinsic) != 9 or len(cal.extrinsic) != 16:
            raise SegmentError(f"{path}: calibration of {src} has {len(cal.intrinsic)} intrinsic and "
                               f"{len(cal.extrinsic)} extrinsic values, expected 9 (f_u, f_v, c_u, c_v, k1, k2, p1, "
                               "p2, k3) and 16 (4x4 row-major)")
        calib_w, calib_h = cal.width or native[view][0], cal.height or native[view][1]
        (w, h), (sx, sy) = stored[view], (stored[view][0] / calib_w, stored[view][1] / calib_h)
        fu, fv, cu, cv, *dist = cal.intrinsic
        cams[view] = {
            "source_name": src, "width": w, "height": h,
            "intrinsics": {"fx": fu * sx, "fy": fv * sy, "cx": cu * sx, "cy": cv * sy},
            "distortion": [float(d) for d in dist],
            "camera_to_vehicle": [[float(x) for x in cal.extrinsic[r * 4: r * 4 + 4]] for r in range(4)],
        }
    return {"frame_rate": layout.FRAME_RATE, "vehicle_frame": layout.VEHICLE_FRAME, "cameras": cams}


def _frames(path: str) -> Iterator[tuple[int, Frame]]:
    for offset, data in iter_records(path):
        try:
            yield offset, parse_frame(data)
        except ProtoError as e:
            raise SegmentError(f"{path}: byte offset {offset}: malformed Frame record: {e}") from e


def _decode_jpeg(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise SegmentError(f"{where}: cannot decode the JPEG ({len(data)} bytes; {type(e).__name__}: {e})") from e


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_partials(partial: str, clip_id: str) -> None:
    """Delete this clip's partial files left by killed runs (named `<clip>.<what>.<pid>.<ext>`; pid not alive)."""
    for stale in glob.glob(os.path.join(partial, f"{glob.escape(clip_id)}.*")):
        pid = os.path.basename(stale).split(".")[-2]
        if not pid.isdigit() or not _pid_alive(int(pid)):
            os.remove(stale)


def _write_json_atomic(path: str, obj, tmp: str) -> None:
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def prepare_segment(path: str, out_root: str, resize: tuple[int, int] | None = None, crf: int = 18,
                    deterministic: bool = False) -> SegmentResult:
    """Prepare one segment file (see the module docstring); raises SegmentError / TFRecordError on bad input."""
    t0 = time.time()
    frames = _frames(path)
    first = next(frames, None)
    if first is None:
        raise SegmentError(f"{path}: no records (empty file), expected Waymo Frame records")
    ctx = first[1].context
    clip_id = (ctx.name if ctx is not None and ctx.name else "") or clip_id_from_filename(path)
    if "/" in clip_id or clip_id in ("", ".", ".."):
        raise SegmentError(f"{path}: byte offset 0: unusable clip id {clip_id!r} from Frame.context.name")
    if all(os.path.isfile(p) for p in output_paths(out_root, clip_id)):
        return SegmentResult(path, clip_id, 0, True, time.time() - t0)
    partial = os.path.join(out_root, PARTIAL_DIR)
    os.makedirs(partial, exist_ok=True)
    _remove_stale_partials(partial, clip_id)
    for p in output_paths(out_root, clip_id):
        os.makedirs(os.path.dirname(p), exist_ok=True)
    ctx = None
    writers: dict[str, video.Mp4Writer] = {}
    native: dict[str, tuple[int, int]] = {}
    n = 0
    try:
        for offset, frame in itertools.chain([first], frames):
            if ctx is None and frame.context is not None and frame.context.camera_calibrations:
                ctx = frame.context
            seen: set[str] = set()
            for img in frame.images:
                view = ENUM_TO_VIEW.get(img.name)
                if view is None:
                    continue
                where = f"{path}: byte offset {offset}: frame {n} camera {WAYMO_SOURCE_NAMES[view]}"
                if view in seen:
                    raise SegmentError(f"{where}: a second image of this camera in the same frame")
                seen.add(view)
                rgb = _decode_jpeg(img.image, where)
                size = (rgb.shape[1], rgb.shape[0])
                if view not in writers:
                    native[view] = size
                    w, h = resize or size
                    tmp = os.path.join(partial, f"{clip_id}.{view}.{os.getpid()}.mp4")
                    writers[view] = video.Mp4Writer(layout.video_path(out_root, view, clip_id), w, h,
                                                    fps=layout.FRAME_RATE, crf=crf, gop=GOP,
                                                    deterministic=deterministic, tmp_path=tmp)
                elif size != native[view]:
                    raise SegmentError(f"{where}: image is {size[0]}x{size[1]}, earlier frames were "
                                       f"{native[view][0]}x{native[view][1]}")
                if resize is not None:
                    rgb = video.resize(rgb[None], (resize[1], resize[0]))[0]
                writers[view].write(rgb)
            if len(seen) < len(VIEW_KEYS):
                missing = [WAYMO_SOURCE_NAMES[v] for v in VIEW_KEYS if v not in seen]
                raise SegmentError(f"{path}: byte offset {offset}: frame {n} has no image for {', '.join(missing)} "
                                   "(every frame needs all five cameras: FRONT, FRONT_LEFT, FRONT_RIGHT, SIDE_LEFT, "
                                   "SIDE_RIGHT)")
            n += 1
        if ctx is None:
            raise SegmentError(f"{path}: no Frame.context with camera_calibrations in any of {n} records")
        rig = rig_json(path, ctx, {v: (w.width, w.height) for v, w in writers.items()}, native)
        for view in VIEW_KEYS:
            writers.pop(view).close()
        _write_json_atomic(layout.rig_path(out_root, clip_id), rig,
                           os.path.join(partial, f"{clip_id}.rig.{os.getpid()}.json"))
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return SegmentResult(path, clip_id, n, False, time.time() - t0)


def _describe(path: str, e: BaseException) -> str:
    msg = str(e)
    return msg if msg.startswith(path) else f"{path}: {type(e).__name__}: {msg}"


def prepare(input_dir: str, out_root: str, workers: int = 1, resize: tuple[int, int] | None = None, crf: int = 18,
            deterministic: bool = False, progress: bool = True) -> tuple[list[SegmentResult], list[str]]:
    """Prepare every segment of `input_dir`; returns (results of those that succeeded, error messages)."""
    from tqdm import tqdm

    segments = list_segments(input_dir)
    if not segments:
        raise FileNotFoundError(f"{input_dir}: no *.tfrecord files (expected Waymo v1 segment files)")
    os.makedirs(out_root, exist_ok=True)
    results: list[SegmentResult] = []
    failures: list[str] = []
    bar = tqdm(total=len(segments), unit="segment", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    t0, frames = time.time(), 0

    def record(path: str, result: SegmentResult | None, error: BaseException | None) -> None:
        nonlocal frames
        if error is not None:
            failures.append(_describe(path, error))
            bar.write(f"FAILED {failures[-1]}", file=sys.stderr)
        else:
            results.append(result)
            frames += result.frames
            bar.set_postfix(frames_per_s=f"{frames / max(time.time() - t0, 1e-9):.1f}")
        bar.update(1)

    args = (out_root, resize, crf, deterministic)
    if workers <= 1 or len(segments) == 1:
        for seg in segments:
            try:
                r = prepare_segment(seg, *args)
            except Exception as e:  # reported and counted; the command exits 1
                record(seg, None, e)
            else:
                record(seg, r, None)
    else:
        # spawn: the parent may already run threads (JAX, x264) that a fork would copy mid-state.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(segments)), mp_context=ctx) as pool:
            futures = {pool.submit(prepare_segment, seg, *args): seg for seg in segments}
            try:
                for fut in concurrent.futures.as_completed(futures):
                    err = fut.exception()
                    record(futures[fut], None if err else fut.result(), err)
            except KeyboardInterrupt:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    bar.close()
    partial = os.path.join(out_root, PARTIAL_DIR)
    if os.path.isdir(partial) and not os.listdir(partial):
        os.rmdir(partial)
    return sorted(results, key=lambda r: r.path), failures


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cosmos_jax.data.prepare_waymo",
                                 description="Waymo v1 segment tfrecords -> the Cosmos Single2MultiView layout")
    ap.add_argument("--input", required=True, help="folder with Waymo v1 segment *.tfrecord files")
    ap.add_argument("--output", required=True, help="dataset root to write, e.g. DATA_ROOT/waymo")
    ap.add_argument("--workers", type=int, default=1, help="segments prepared in parallel (processes)")
    ap.add_argument("--resize", default=None, help="store every view at WxH (e.g. 1024x576); default native size")
    ap.add_argument("--crf", type=int, default=18, help="libx264 constant rate factor")
    ap.add_argument("--deterministic", action="store_true", help="one x264 thread per video: reproducible bytes")
    ap.add_argument("--no_progress", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    try:
        resize = parse_size(a.resize) if a.resize else None
        t0 = time.time()
        results, failures = prepare(a.input, a.output, a.workers, resize, a.crf, a.deterministic,
                                    progress=not a.no_progress)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    done = [r for r in results if not r.skipped]
    seconds = time.time() - t0
    frames = sum(r.frames for r in done)
    print(f"prepared {len(done)} segment(s) ({frames} frames, {frames / max(seconds, 1e-9):.1f} frames/s), "
          f"skipped {len(results) - len(done)} already complete, failed {len(failures)}; {seconds:.1f} s")
    for f in failures:
        print(f"FAILED {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
