"""Finding and decoding QR codes in scanned images and photos (zxing-cpp, Pillow).

Shared by `fleet verify --images` and the server's `POST /api/v1/verify/images`. Both libraries
are imported when first used, so the rest of `fleet` works without them.
"""

from __future__ import annotations

import io
from typing import Any, BinaryIO

#: Images larger than this are refused before they are decoded into memory (a 40 MP grayscale
#: image is 40 MB; a phone photo is 12-50 MP, a 600 dpi A4 scan 35 MP).
MAX_PIXELS = 60_000_000
#: File name endings `fleet verify --images` reads.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


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
        return _checked_size(img)


def decode_qr_texts(data: bytes) -> list[str]:
    """The text of every QR code found in the image, in the order zxing-cpp reports them.

    Raises ImageUnreadable for bytes that are not a PNG/JPEG/... image or too many pixels.
    """
    zxingcpp, Image = _libs()
    with _open(Image, data) as img:
        _checked_size(img)  # before convert(), which decodes
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
