"""TFRecord files without TensorFlow: a checked reader (docs/data-layout.md §8.3).

Each record is framed as

    uint64 LE length | uint32 LE masked_crc32c(length bytes) | data[length] | uint32 LE masked_crc32c(data)

with mask(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2^32) over CRC-32C (Castagnoli). The reader checks
both CRCs by default; a bad CRC or a file that ends inside a record raises `TFRecordError` naming the file and the
byte offset of the record. Files are uncompressed (Waymo v1 segments are read with `compression_type=""`).

CRC-32C comes from the `crc32c` package (C, GB/s); without it `google_crc32c` is tried, then a pure-Python table
(correct but about 1000x slower, fine only for small test files).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")


class TFRecordError(ValueError):
    """A TFRecord file that cannot be read: the message names the file, the byte offset and what was expected."""


def _python_crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


def _make_crc32c():
    try:
        import crc32c as _c

        return _c.crc32c
    except ImportError:
        pass
    try:
        import google_crc32c as _g

        return lambda data: _g.value(bytes(data))
    except ImportError:
        pass
    table = _python_crc32c_table()

    def crc(data) -> int:
        c = 0xFFFFFFFF
        for b in bytes(data):
            c = table[(c ^ b) & 0xFF] ^ (c >> 8)
        return c ^ 0xFFFFFFFF

    return crc


crc32c = _make_crc32c()


def masked_crc(data) -> int:
    """TFRecord's masked CRC-32C of `data` (bytes-like)."""
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def iter_records(path: str, check_crc: bool = True) -> Iterator[tuple[int, bytes]]:
    """(byte offset of the record, record data) for every record of `path`, in file order."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        offset = 0
        while True:
            header = f.read(_HEADER.size)
            if not header:
                return
            if len(header) < _HEADER.size:
                raise TFRecordError(f"{path}: byte offset {offset}: file ends inside a record header "
                                    f"({len(header)} of {_HEADER.size} bytes; file size {size}): truncated file")
            length, length_crc = _HEADER.unpack(header)
            if check_crc and masked_crc(header[:8]) != length_crc:
                raise TFRecordError(f"{path}: byte offset {offset}: record length CRC mismatch (stored "
                                    f"0x{length_crc:08x}, computed 0x{masked_crc(header[:8]):08x}): corrupt file")
            end = offset + _HEADER.size + length + _FOOTER.size
            if end > size:
                raise TFRecordError(f"{path}: byte offset {offset}: record of {length} data bytes ends at byte "
                                    f"{end}, past the end of the file ({size} bytes): truncated file")
            data = f.read(length)
            footer = f.read(_FOOTER.size)
            if len(data) != length or len(footer) != _FOOTER.size:
                raise TFRecordError(f"{path}: byte offset {offset}: short read of a {length}-byte record "
                                    "(file changed while reading?)")
            if check_crc:
                (stored,) = _FOOTER.unpack(footer)
                computed = masked_crc(data)
                if stored != computed:
                    raise TFRecordError(f"{path}: byte offset {offset}: record data CRC mismatch (stored "
                                        f"0x{stored:08x}, computed 0x{computed:08x}, {length} data bytes): "
                                        "corrupt file")
            yield offset, data
            offset = end
