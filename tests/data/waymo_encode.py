"""Writers of Waymo-format files for the test fixtures: a protobuf wire-format encoder for the `Frame` fields that
cosmos_jax/data/waymo_proto.py decodes, and TFRecord framing (the inverse of cosmos_jax/data/tfrecord.py)."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence

from cosmos_jax.data import tfrecord
from cosmos_jax.data import waymo_proto as wp


def encode_varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_key(field: int, wt: int) -> bytes:
    return encode_varint(field << 3 | wt)


def field_varint(field: int, v: int) -> bytes:
    return encode_key(field, wp.WT_VARINT) + encode_varint(v)


def field_bytes(field: int, payload: bytes) -> bytes:
    return encode_key(field, wp.WT_BYTES) + encode_varint(len(payload)) + bytes(payload)


def field_doubles(field: int, values: Sequence[float], packed: bool = False) -> bytes:
    if packed:
        return field_bytes(field, struct.pack(f"<{len(values)}d", *values))
    return b"".join(encode_key(field, wp.WT_FIXED64) + struct.pack("<d", v) for v in values)


def encode_transform(values: Sequence[float], packed: bool = False) -> bytes:
    return field_doubles(1, values, packed)


def encode_camera_calibration(cal: wp.CameraCalibration, packed: bool = False) -> bytes:
    return (field_varint(1, cal.name) + field_doubles(2, cal.intrinsic, packed)
            + field_bytes(3, encode_transform(cal.extrinsic, packed))
            + field_varint(4, cal.width) + field_varint(5, cal.height))


def encode_context(ctx: wp.Context, packed: bool = False) -> bytes:
    return field_bytes(1, ctx.name.encode("utf-8")) + b"".join(
        field_bytes(2, encode_camera_calibration(c, packed)) for c in ctx.camera_calibrations)


def encode_camera_image(img: wp.CameraImage) -> bytes:
    return field_varint(1, img.name) + field_bytes(2, img.image)


def encode_frame(frame: wp.Frame, packed: bool = False) -> bytes:
    """Serialize the known fields; append other fields (e.g. `field_bytes(5, ...)` for lasers) as raw bytes."""
    out = field_bytes(1, encode_context(frame.context, packed)) if frame.context is not None else b""
    out += field_varint(2, frame.timestamp_micros)
    return out + b"".join(field_bytes(4, encode_camera_image(i)) for i in frame.images)


def encode_record(data: bytes) -> bytes:
    """One framed record."""
    header = struct.pack("<Q", len(data))
    crc = lambda b: struct.pack("<I", tfrecord.masked_crc(b))  # noqa: E731
    return header + crc(header) + bytes(data) + crc(data)


def write_records(path: str, records: Iterable[bytes]) -> list[int]:
    """Write `records` to `path` (atomically: temporary file, then rename); returns each record's byte offset."""
    tmp = f"{path}.tmp-{os.getpid()}"
    offsets, pos = [], 0
    with open(tmp, "wb") as f:
        for r in records:
            framed = encode_record(r)
            offsets.append(pos)
            f.write(framed)
            pos += len(framed)
    os.replace(tmp, path)
    return offsets
