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


def many_scans_jpeg(width: int, height: int, scans: int) -> bytes:
    """A progressive grayscale JPEG of noise whose first AC scan (with the tables before it) is
    repeated until it has `scans` scans: decoding costs ~scans x pixels, which a pixel count
    from the header does not see. Restart markers and 0xFF00 stuffing are in every scan's data,
    for a marker walk to step over."""
    import io
    import random

    from PIL import Image

    rng = random.Random(7)
    img = Image.frombytes(
        "L", (width, height), bytes(rng.randrange(256) for _ in range(width * height))
    )
    buf = io.BytesIO()
    img.save(buf, "JPEG", progressive=True, quality=95, restart_marker_blocks=1)
    data = buf.getvalue()
    segments = _jpeg_segments(data)
    first = sum(1 for kind, _, _ in segments if kind == 0xDA)
    for k, (kind, start, end) in enumerate(segments):
        ss = data[start + 5 + 2 * data[start + 4]] if kind == 0xDA else 0
        if kind == 0xDA and ss > 0:  # an AC scan: it refines what the DC scan decoded
            if segments[k - 1][0] == 0xC4:  # with the Huffman table it uses
                start = segments[k - 1][1]
            scan = data[start:end]
            break
    else:
        raise AssertionError("no AC scan")
    body = data[: segments[-1][1]]  # all but the EOI
    out = body + scan * (scans - first) + b"\xff\xd9"
    assert b"\xff\xd0" in scan and b"\xff\x00" in scan  # what a walk must step over
    return out


def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment after SOI; a scan's entropy-coded data is in its
    SOS segment. For the well-formed files Pillow writes."""
    out, i = [], 2
    while i < len(data):
        kind = data[i + 1]
        if kind == 0xD9:
            out.append((kind, i, i + 2))
            break
        end = i + 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
        if kind == 0xDA:  # entropy-coded data up to the next marker that is not RSTn
            while True:
                end = data.index(b"\xff", end)
                if data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                    end += 2
                    continue
                break
        out.append((kind, i, end))
        i = end
    return out
