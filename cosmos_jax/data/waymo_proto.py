"""A zero-dependency protobuf wire-format decoder for the few Waymo `Frame` fields that camera-only data preparation
needs (docs/data-layout.md §8.2).

Field numbers follow `waymo-research/waymo-open-dataset`, `src/waymo_open_dataset/dataset.proto` (package
`waymo.open_dataset`, proto2), Copyright The Waymo Open Dataset Authors, licensed under the Apache License 2.0
(http://www.apache.org/licenses/LICENSE-2.0). Only the numbers and types below are taken from it:

    Frame              context=1 (Context), timestamp_micros=2 (int64), images=4 (repeated CameraImage);
                       lasers=5 and every other field are skipped
    Context            name=1 (string), camera_calibrations=2 (repeated CameraCalibration)
    CameraCalibration  name=1 (CameraName.Name enum), intrinsic=2 (repeated double: f_u, f_v, c_u, c_v, k1, k2, p1,
                       p2, k3; unpacked on the wire in Waymo's files, packed accepted too), extrinsic=3 (Transform),
                       width=4 (int32), height=5 (int32)
    CameraImage        name=1 (CameraName.Name enum), image=2 (bytes: JPEG)
    Transform          transform=1 (repeated double, 16 values, row-major 4x4)
    CameraName.Name    UNKNOWN=0 FRONT=1 FRONT_LEFT=2 FRONT_RIGHT=3 SIDE_LEFT=4 SIDE_RIGHT=5

Decoding works on a `memoryview` of the record: a skipped field (e.g. `lasers`, most of each record's bytes) costs
one varint read and a slice bound, never a copy. A singular message field that appears more than once is merged
(its chunks are parsed as one message), a scalar's last value wins, as protobuf does. Wire types 0 (varint),
1 (fixed64), 2 (length-delimited), 5 (fixed32) and groups (3/4, skipped) are understood.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator

WT_VARINT, WT_FIXED64, WT_BYTES, WT_START_GROUP, WT_END_GROUP, WT_FIXED32 = 0, 1, 2, 3, 4, 5


class ProtoError(ValueError):
    """Malformed protobuf bytes; the message says which message and byte position."""


@dataclasses.dataclass(frozen=True)
class CameraCalibration:
    name: int
    intrinsic: tuple[float, ...]  # f_u, f_v, c_u, c_v, k1, k2, p1, p2, k3
    extrinsic: tuple[float, ...]  # camera -> vehicle, 4x4 row-major
    width: int
    height: int


@dataclasses.dataclass(frozen=True)
class Context:
    name: str
    camera_calibrations: tuple[CameraCalibration, ...] = ()


@dataclasses.dataclass(frozen=True)
class CameraImage:
    name: int
    image: bytes


@dataclasses.dataclass(frozen=True)
class Frame:
    context: Context | None
    timestamp_micros: int
    images: tuple[CameraImage, ...]


# --------------------------------------------------------------------------------------------------------------------
# Decoding

def _varint(buf: memoryview, pos: int, what: str) -> tuple[int, int]:
    result = shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise ProtoError(f"{what}: truncated varint at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtoError(f"{what}: varint longer than 10 bytes at byte {pos}")


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def iter_fields(buf: memoryview, what: str = "message") -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) per field: an int for varints, a memoryview slice otherwise (no copy)."""
    pos, end = 0, len(buf)
    depth = 0  # inside skipped groups
    while pos < end:
        key, pos = _varint(buf, pos, what)
        field, wt = key >> 3, key & 7
        if field == 0:
            raise ProtoError(f"{what}: field number 0 at byte {pos}")
        if wt == WT_VARINT:
            value, pos = _varint(buf, pos, what)
        elif wt in (WT_FIXED64, WT_FIXED32):
            n = 8 if wt == WT_FIXED64 else 4
            if pos + n > end:
                raise ProtoError(f"{what}: field {field} needs {n} bytes at byte {pos}, message has {end}")
            value, pos = buf[pos: pos + n], pos + n
        elif wt == WT_BYTES:
            n, pos = _varint(buf, pos, what)
            if pos + n > end:
                raise ProtoError(f"{what}: field {field} declares {n} bytes at byte {pos}, message has {end}")
            value, pos = buf[pos: pos + n], pos + n
        elif wt == WT_START_GROUP:
            depth += 1
            continue
        elif wt == WT_END_GROUP:
            if depth == 0:
                raise ProtoError(f"{what}: unmatched end-group at byte {pos}")
            depth -= 1
            continue
        else:
            raise ProtoError(f"{what}: field {field} has invalid wire type {wt} at byte {pos}")
        if depth == 0:
            yield field, wt, value


def _doubles(wt: int, value, what: str) -> tuple[float, ...]:
    """A repeated double field's values from one occurrence: unpacked (fixed64) or packed (length-delimited)."""
    if wt == WT_FIXED64:
        return struct.unpack("<d", value)
    if wt == WT_BYTES:
        if len(value) % 8:
            raise ProtoError(f"{what}: packed doubles of {len(value)} bytes (not a multiple of 8)")
        return struct.unpack(f"<{len(value) // 8}d", value)
    raise ProtoError(f"{what}: repeated double with wire type {wt}, expected 1 (fixed64) or 2 (packed)")


def _int(wt: int, value, what: str, field: str) -> int:
    if wt != WT_VARINT:
        raise ProtoError(f"{what}.{field}: wire type {wt}, expected 0 (varint)")
    return _signed64(value)


def _bytes(wt: int, value, what: str, field: str) -> memoryview:
    if wt != WT_BYTES:
        raise ProtoError(f"{what}.{field}: wire type {wt}, expected 2 (length-delimited)")
    return value


def parse_transform(buf: memoryview) -> tuple[float, ...]:
    values: list[float] = []
    for field, wt, value in iter_fields(buf, "Transform"):
        if field == 1:
            values.extend(_doubles(wt, value, "Transform.transform"))
    return tuple(values)


def parse_camera_calibration(buf: memoryview) -> CameraCalibration:
    name = width = height = 0
    intrinsic: list[float] = []
    extrinsic_chunks: list[bytes] = []
    for field, wt, value in iter_fields(buf, "CameraCalibration"):
        if field == 1:
            name = _int(wt, value, "CameraCalibration", "name")
        elif field == 2:
            intrinsic.extend(_doubles(wt, value, "CameraCalibration.intrinsic"))
        elif field == 3:
            extrinsic_chunks.append(bytes(_bytes(wt, value, "CameraCalibration", "extrinsic")))
        elif field == 4:
            width = _int(wt, value, "CameraCalibration", "width")
        elif field == 5:
            height = _int(wt, value, "CameraCalibration", "height")
    extrinsic = parse_transform(memoryview(b"".join(extrinsic_chunks))) if extrinsic_chunks else ()
    return CameraCalibration(name, tuple(intrinsic), extrinsic, width, height)


def parse_context(buf: memoryview) -> Context:
    name = ""
    cals: list[CameraCalibration] = []
    for field, wt, value in iter_fields(buf, "Context"):
        if field == 1:
            raw = bytes(_bytes(wt, value, "Context", "name"))
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ProtoError(f"Context.name is not UTF-8 ({e})") from e
        elif field == 2:
            cals.append(parse_camera_calibration(_bytes(wt, value, "Context", "camera_calibrations")))
    return Context(name, tuple(cals))


def parse_camera_image(buf: memoryview) -> CameraImage:
    name, image = 0, b""
    for field, wt, value in iter_fields(buf, "CameraImage"):
        if field == 1:
            name = _int(wt, value, "CameraImage", "name")
        elif field == 2:
            image = bytes(_bytes(wt, value, "CameraImage", "image"))
    return CameraImage(name, image)


def parse_frame(data) -> Frame:
    """The fields of a serialized `waymo.open_dataset.Frame` listed in the module docstring."""
    buf = memoryview(data)
    context_chunks: list[memoryview] = []
    timestamp = 0
    images: list[CameraImage] = []
    for field, wt, value in iter_fields(buf, "Frame"):
        if field == 1:
            context_chunks.append(_bytes(wt, value, "Frame", "context"))
        elif field == 2:
            timestamp = _int(wt, value, "Frame", "timestamp_micros")
        elif field == 4:
            images.append(parse_camera_image(_bytes(wt, value, "Frame", "images")))
    if not context_chunks:
        context = None
    elif len(context_chunks) == 1:
        context = parse_context(context_chunks[0])
    else:
        context = parse_context(memoryview(b"".join(bytes(c) for c in context_chunks)))
    return Frame(context, timestamp, tuple(images))
