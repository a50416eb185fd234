"""Video files through PyAV: probe (frames, fps, size), exact frame windows, antialiased resize, and writing.

Frame indices are exact: after seeking to the keyframe before the window, frames are counted by presentation
timestamp, and if the seek lands after the window start the file is decoded from its beginning instead.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np
from PIL import Image


class BadVideoError(ValueError):
    """A video that cannot serve the request (missing, corrupt, too short); the message names the file."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    path: str
    num_frames: int
    fps: float
    width: int
    height: int


def probe(path: str, count_frames: bool = True) -> VideoInfo:
    """Frame count (decoded, exact, when `count_frames`), average fps (24 if unknown, as upstream), size."""
    if not os.path.isfile(path):
        raise BadVideoError(f"{path}: video file missing")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise BadVideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else 24.0
            width, height = stream.codec_context.width, stream.codec_context.height
            if count_frames:
                n = sum(1 for _ in container.decode(stream))
            else:
                n = int(stream.frames)
    except BadVideoError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise BadVideoError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from e
    return VideoInfo(path, n, fps, width, height)


def _frame_index(frame: av.VideoFrame, stream, start_pts: int, fps: float) -> int:
    if frame.pts is None:
        raise BadVideoError("frame without timestamp")
    return int(round(float((frame.pts - start_pts) * stream.time_base) * fps))


def read_frames(path: str, frame_ids: Sequence[int]) -> np.ndarray:
    """The frames `frame_ids` (sorted, non-negative) as uint8 [F, H, W, 3] RGB."""
    wanted = sorted(set(int(i) for i in frame_ids))
    if not wanted or wanted[0] < 0:
        raise ValueError(f"{path}: frame ids must be non-negative, got {list(frame_ids)[:5]}")
    if not os.path.isfile(path):
        raise BadVideoError(f"{path}: video file missing")
    got: dict[int, np.ndarray] = {}
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            fps = float(stream.average_rate) if stream.average_rate else 24.0
            start_pts = stream.start_time or 0
            for attempt in ("seek", "from_start"):
                got.clear()
                if attempt == "seek" and wanted[0] > 0:
                    target = start_pts + int(wanted[0] / fps / stream.time_base)
                    container.seek(target, stream=stream, backward=True, any_frame=False)
                elif attempt == "seek":
                    continue
                else:
                    container.seek(start_pts, stream=stream, backward=True, any_frame=False)
                first = None
                for frame in container.decode(stream):
                    idx = _frame_index(frame, stream, start_pts, fps)
                    first = idx if first is None else first
                    if idx in wanted and idx not in got:
                        got[idx] = frame.to_ndarray(format="rgb24")
                    if idx >= wanted[-1]:
                        break
                if first is not None and first <= wanted[0]:
                    break
    except BadVideoError as e:
        raise BadVideoError(f"{path}: {e}") from e
    except (av.error.FFmpegError, ValueError, OSError, IndexError) as e:
        raise BadVideoError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from e
    missing = [i for i in wanted if i not in got]
    if missing:
        raise BadVideoError(f"{path}: frames {missing[:3]}{'...' if len(missing) > 3 else ''} not found "
                            f"(video has {len(got) and max(got) + 1 or 0}+ frames readable, needs up to "
                            f"{wanted[-1] + 1})")
    return np.stack([got[int(i)] for i in frame_ids])


def resize(frames_FHW3: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Direct antialiased bilinear resize to (H, W), no crop, aspect not preserved (upstream's torchvision
    `resize(..., antialias=True)`), uint8 in and out."""
    h, w = size_hw
    if frames_FHW3.shape[1:3] == (h, w):
        return frames_FHW3
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in frames_FHW3])


def write_mp4(path: str, frames_FHW3: np.ndarray, fps: float = 10.0, crf: int = 18, gop: int = 10,
              deterministic: bool = False) -> None:
    """H.264 (libx264, yuv420p) with a short keyframe interval, written atomically (temporary file, rename).

    x264's threaded encoder is not bit-reproducible; `deterministic` encodes on one thread (same bytes each run).
    """
    f, h, w, _ = frames_FHW3.shape
    if h % 2 or w % 2:
        raise ValueError(f"{path}: yuv420p needs even sizes, got {w}x{h}")
    tmp = f"{path}.tmp-{os.getpid()}.mp4"
    with av.open(tmp, mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "g": str(gop), "keyint_min": str(min(gop, 10))}
        if deterministic:
            stream.options = {**stream.options, "threads": "1"}
        for frame in frames_FHW3:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
