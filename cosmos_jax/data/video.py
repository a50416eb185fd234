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


_PLANAR_420 = ("yuv420p", "yuvj420p")


def _resize_plane(a_HW: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    h, w = size_hw
    return a_HW if a_HW.shape == (h, w) else np.asarray(Image.fromarray(a_HW).resize((w, h), Image.BILINEAR))


def frame_rgb(frame: av.VideoFrame, size_hw: tuple[int, int] | None = None) -> np.ndarray:
    """One decoded frame as uint8 [H, W, 3] RGB, resized to `size_hw` (see the module docstring) when given."""
    if size_hw is None or tuple(size_hw) == (frame.height, frame.width):
        return frame.to_ndarray(format="rgb24")
    h, w = size_hw
    if frame.format.name not in _PLANAR_420 or h % 2 or w % 2:
        return resize(frame.to_ndarray(format="rgb24")[None], size_hw)[0]
    small = av.VideoFrame(w, h, frame.format.name)
    for src, dst in zip(frame.planes, small.planes, strict=True):
        plane = np.frombuffer(src, np.uint8).reshape(src.height, src.line_size)[:, :src.width]
        np.frombuffer(dst, np.uint8).reshape(dst.height, dst.line_size)[:, :dst.width] = _resize_plane(
            plane, (dst.height, dst.width))
    small.colorspace, small.color_range = frame.colorspace, frame.color_range
    return small.to_ndarray(format="rgb24")


def read_frames(path: str, frame_ids: Sequence[int], size_hw: tuple[int, int] | None = None) -> np.ndarray:
    """The frames `frame_ids` (sorted, non-negative) as uint8 [F, H, W, 3] RGB, resized to `size_hw` (no crop,
    aspect not preserved) when given."""
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
                        got[idx] = frame_rgb(frame, size_hw)
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


class Mp4Writer:
    """Streaming H.264 (libx264, yuv420p) writer with a short keyframe interval: frames are encoded as they come,
    into a temporary file that is renamed to `path` only by a successful `close()`; `abort()` (or leaving the `with`
    block on an exception) deletes it, so an interrupted write never leaves a partial file at `path`.

    `tmp_path` (default `<path>.tmp-<pid>.mp4`) lets a caller keep partial files out of folders that readers list.
    x264's threaded encoder is not bit-reproducible; `deterministic` encodes on one thread (same bytes each run).
    """

    def __init__(self, path: str, width: int, height: int, fps: float = 10.0, crf: int = 18, gop: int = 10,
                 deterministic: bool = False, tmp_path: str | None = None):
        if height % 2 or width % 2:
            raise ValueError(f"{path}: yuv420p needs even sizes, got {width}x{height}")
        self.path, self.width, self.height, self.frames = path, width, height, 0
        self._tmp = tmp_path or f"{path}.tmp-{os.getpid()}.mp4"
        self._container = av.open(self._tmp, mode="w", format="mp4")
        try:
            stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": str(crf), "g": str(gop), "keyint_min": str(min(gop, 10))}
            if deterministic:
                stream.options = {**stream.options, "threads": "1"}
        except BaseException:
            self.abort()
            raise
        self._stream = stream

    def write(self, frame_HW3: np.ndarray) -> None:
        if frame_HW3.shape != (self.height, self.width, 3) or frame_HW3.dtype != np.uint8:
            raise ValueError(f"{self.path}: frame {self.frames} is {frame_HW3.dtype} {frame_HW3.shape}, expected "
                             f"uint8 {(self.height, self.width, 3)}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_HW3), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush, close and move the file into place."""
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop the partial file."""
        try:
            self._container.close()
        except Exception:  # the file is deleted either way; the original error is what matters
            pass
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_mp4(path: str, frames_FHW3: np.ndarray, fps: float = 10.0, crf: int = 18, gop: int = 10,
              deterministic: bool = False) -> None:
    """H.264 (libx264, yuv420p) with a short keyframe interval, written atomically (temporary file, rename).

    x264's threaded encoder is not bit-reproducible; `deterministic` encodes on one thread (same bytes each run).
    """
    f, h, w, _ = frames_FHW3.shape
    with Mp4Writer(path, w, h, fps, crf, gop, deterministic) as out:
        for frame in frames_FHW3:
            out.write(frame)
