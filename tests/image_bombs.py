"""Images that claim more pixels than they hold: a PNG whose header declares width x height and
whose pixel data is cut short. A guard that reads only the header refuses it with the pixel
limit's words; anything that decodes it fails later, on the missing data, with other words."""

from __future__ import annotations

import struct
import zlib


def declared_png(width: int, height: int) -> bytes:
    """A grayscale PNG declaring width x height, with one short IDAT chunk (~100 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
