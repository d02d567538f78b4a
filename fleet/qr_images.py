"""Finding and decoding QR codes in scanned images and photos (zxing-cpp, Pillow).

Shared by `fleet verify --images` and the server's `POST /api/v1/verify/images`. Both libraries
are imported when first used, so the rest of `fleet` works without them.
"""

from __future__ import annotations

import io
import re
from typing import Any, BinaryIO

#: Images larger than this are refused before they are decoded into memory (a 40 MP grayscale
#: image is 40 MB; a phone photo is 12-50 MP, a 600 dpi A4 scan 35 MP).
MAX_PIXELS = 60_000_000
#: File name endings `fleet verify --images` reads.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Scans in one JPEG. Each scan of a progressive JPEG is another pass over every pixel, so a
#: file repeating one scan thousands of times costs seconds of CPU (2,000 scans of a 7,000 px
#: square: 8 s) while its header declares few pixels. Encoders write 6 (gray) to 10 (colour);
#: at 100 the worst is ~10 times a normal decode, and the pixel limits bound the rest.
MAX_JPEG_SCANS = 100
#: Markers a segment walk steps through before it stops and counts what is left by the bytes.
_MAX_JPEG_MARKERS = 10_000
#: A marker as libjpeg finds one: 0xFF, then a code that is neither 0x00 (a stuffed 0xFF byte in
#: a scan's data) nor 0xFF (fill), nor RST0-7 (restart markers, no length, inside scans' data).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOS, _EOI = 0xDA, 0xD9
#: Markers without a length: SOI, TEM (RSTn never match _JPEG_MARKER).
_STANDALONE = (0xD8, 0x01)


class ImageUnreadable(ValueError):
    """Not an image Pillow can read, or too large."""


class ImageSupportMissing(ImportError):
    """zxing-cpp or Pillow is not installed."""


def _libs() -> tuple[Any, Any]:
    try:
        import zxingcpp
        from PIL import Image
    except ImportError as e:
        raise ImageSupportMissing(
            f"reading QR codes from images needs zxing-cpp and Pillow ({e.name} is missing): "
            "pip install 'kiosk-fleet[auditor]'"
        ) from None
    return zxingcpp, Image


def ensure_available() -> None:
    """Raise ImageSupportMissing now rather than at the first image."""
    _libs()


def image_size(source: bytes | BinaryIO) -> tuple[int, int]:
    """(width, height) as the image's header declares them, which is what decoding it would
    allocate and scan, read without decoding anything (Pillow opens images lazily).

    Raises ImageUnreadable for what is not an image, or one over MAX_PIXELS.
    """
    _, Image = _libs()
    with _open(Image, source) as img:
        size = _checked_size(img)
        if isinstance(source, bytes):  # a file is checked by decode_qr_texts, once read
            _check_scans(img, source)
        return size


def decode_qr_texts(data: bytes) -> list[str]:
    """The text of every QR code found in the image, in the order zxing-cpp reports them.

    Raises ImageUnreadable for bytes that are not a PNG/JPEG/... image or too many pixels.
    """
    zxingcpp, Image = _libs()
    with _open(Image, data) as img:
        _checked_size(img)  # before convert(), which decodes
        _check_scans(img, data)
        try:
            gray = img.convert("L")  # also drops alpha: transparent PNGs decode as on white
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ImageUnreadable(f"not a readable image ({e})") from None
    fmt = zxingcpp.BarcodeFormat.QRCode
    found = zxingcpp.read_barcodes(gray, formats=fmt)
    if not found:
        # A blurred photo sometimes binarises better on the global histogram.
        found = zxingcpp.read_barcodes(
            gray, formats=fmt, binarizer=zxingcpp.Binarizer.GlobalHistogram
        )
    return [str(b.text) for b in found if b.valid]


def _open(Image: Any, source: bytes | BinaryIO) -> Any:
    """The image with only its header read; ImageUnreadable if there is none."""
    try:
        return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.UnidentifiedImageError:
        raise ImageUnreadable("not an image (PNG, JPEG, ...) that can be read") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageUnreadable(f"not a readable image ({e})") from None


def _checked_size(img: Any) -> tuple[int, int]:
    width, height = int(img.size[0]), int(img.size[1])
    if width * height > MAX_PIXELS:
        raise ImageUnreadable(
            f"image of {width}x{height} pixels is over the {MAX_PIXELS:,} pixel limit"
        )
    return width, height


def _check_scans(img: Any, data: bytes) -> None:
    if img.format in ("JPEG", "MPO") and jpeg_scans(data) > MAX_JPEG_SCANS:
        raise ImageUnreadable(
            f"JPEG of more than {MAX_JPEG_SCANS} scans (encoders write at most ~10): each is "
            "another pass over every pixel"
        )


def jpeg_scans(data: bytes, limit: int = MAX_JPEG_SCANS) -> int:
    """The number of scans (SOS markers) a decoder reads in the JPEG `data`, up to its EOI;
    counting stops past `limit`. Never fewer than a decoder sees: every SOS it reads is the
    bytes FF DA, and those are not counted only where the walk knows a decoder skips them (in
    another segment's payload, like an embedded thumbnail, or after the EOI)."""
    if data.count(b"\xff\xda") <= limit:  # the common case: no walk needed
        return data.count(b"\xff\xda")
    scans, pos = 0, 2  # after SOI
    for _ in range(_MAX_JPEG_MARKERS):
        # Searching for the next marker also steps over a scan's entropy-coded data, and over
        # any bytes between segments, as libjpeg's next_marker() does.
        found = _JPEG_MARKER.search(data, pos)
        if found is None:
            return scans
        code, pos = data[found.start() + 1], found.end()
        if code == _EOI:
            return scans
        if code in _STANDALONE:
            continue
        scans += code == _SOS
        if scans > limit:
            return scans
        # A length under 2 (not JPEG) skips nothing more, as libjpeg's skip_variable() does.
        pos += max(int.from_bytes(data[pos : pos + 2], "big"), 2)
    # Tens of thousands of tiny segments: not walked further, every FF DA left counts.
    return scans + data.count(b"\xff\xda", pos)
