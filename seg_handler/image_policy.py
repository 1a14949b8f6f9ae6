"""Which images the board stores and the model segments: formats, pixel limit and integrity, in ONE place.

The board's upload check and the TorchServe handler both import this module, so an image the board accepts is
one the handler decodes, and the other way round. It needs only the standard library and Pillow (no torch):

    header = inspect(data)                  # raises ImageRejectedError(status 400/413/415, code, message)
    header.mime, header.width, header.height

``inspect`` reads the header only (no pixel decode) and checks every PNG chunk's CRC; the handler's
``decode_image`` decodes the pixels on top of the same checks.

torch-model-archiver flattens this file into the archive root beside handler.py, which therefore imports it
as ``seg_handler.image_policy`` in the repository and as ``image_policy`` in a worker.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any, NamedTuple

from PIL import Image, UnidentifiedImageError

# Pillow format names we open. "JPEG" also opens MPO, the multi-picture JPEG many phones write: Pillow's JPEG
# opener returns an MpoImageFile for it. Naming the openers keeps Pillow from guessing: its TGA reader, for
# one, accepts almost any bytes.
OPEN_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
# Every format name Pillow may report for an accepted image, with the MIME type it is stored under.
MIME_TYPES: dict[str, str] = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "WEBP": "image/webp",
    "TIFF": "image/tiff",
}
ALLOWED_MIME_TYPES = tuple(sorted(set(MIME_TYPES.values())))
# Decoded pixels (width x height) an image may have: 40 MP covers every phone camera; above it 413.
MAX_PIXELS = 40_000_000

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Recognisable images we do not take (answered 415, not "not an image"): magic bytes at offset 0, or the
# ISO-BMFF brand at offset 8 for HEIF/AVIF (phones again).
_UNSUPPORTED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x01\xda", "SGI"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
)
_HEIF_BRANDS = {
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"hevc": "HEIC",
    b"heim": "HEIC",
    b"heis": "HEIC",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
    b"avif": "AVIF",
    b"avis": "AVIF",
}


class ImageRejectedError(Exception):
    """An image that is not stored or segmented.

    ``status`` is the HTTP status (400 bad or corrupt input, 413 too many pixels, 415 a recognised but
    unsupported format); ``code`` a stable string: empty, not_an_image, unsupported_format, corrupt,
    zero_size, too_large.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "code": self.code, "status": self.status}


class ImageHeader(NamedTuple):
    """What ``inspect`` read from the header: the MIME type to store it under and its stored size."""

    mime: str
    width: int
    height: int
    format: str  # Pillow's format name (MPO for a phone's multi-picture JPEG)


def unsupported_format(data: bytes | bytearray) -> str | None:
    """The name of a recognised image format we do not accept (HEIC, ICO, ...), or None."""
    head = bytes(data[:16])
    for magic, name in _UNSUPPORTED_MAGIC:
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":
        return _HEIF_BRANDS.get(head[8:12])
    if len(head) >= 3 and head[:1] == b"P" and head[1:2] in b"123456" and head[2:3] in b" \t\r\n":
        return "PNM"
    return None


def check_png_chunks(data: bytes | bytearray) -> None:
    """Verify the chunk structure and the CRC of every chunk of a PNG, IDAT included, up to IEND.

    Pillow checks the CRCs of the chunks it interprets but not of the image data, so a damaged IDAT would
    otherwise decode to wrong pixels. Raises ImageRejectedError(400, "corrupt") naming the chunk.
    """
    view = memoryview(data)
    if bytes(view[:8]) != _PNG_SIGNATURE:
        raise ImageRejectedError(400, "corrupt", "not a PNG signature")
    offset = 8
    end = len(view)
    while True:
        if offset + 12 > end:
            raise ImageRejectedError(400, "corrupt", f"PNG truncated at byte {offset} (no IEND chunk)")
        (length,) = struct.unpack_from(">I", view, offset)
        kind = bytes(view[offset + 4 : offset + 8])
        body_end = offset + 8 + length
        if length > 0x7FFFFFFF or body_end + 4 > end:
            raise ImageRejectedError(400, "corrupt", f"PNG chunk {kind!r} at byte {offset} is truncated")
        (stored,) = struct.unpack_from(">I", view, body_end)
        if zlib.crc32(view[offset + 4 : body_end]) != stored:
            raise ImageRejectedError(400, "corrupt", f"PNG chunk {kind!r} at byte {offset} has a bad CRC")
        if kind == b"IEND":
            return
        offset = body_end + 4


def open_image(data: bytes | bytearray, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open ``data`` lazily (header parsed, pixels not decoded) after the format, size and integrity checks.

    Pillow's decompression-bomb guard stays on: an image over twice ``Image.MAX_IMAGE_PIXELS`` raises in
    Pillow itself and is answered 413 like one over ``max_pixels``. Raises ImageRejectedError.
    """
    if not isinstance(data, bytes | bytearray):
        raise ImageRejectedError(400, "not_an_image", f"expected image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageRejectedError(400, "empty", "no image bytes")
    try:
        img = Image.open(io.BytesIO(data), formats=OPEN_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning arrives as an exception where the caller made warnings errors (the handler does).
        raise ImageRejectedError(413, "too_large", f"image exceeds the pixel limit: {exc}") from exc
    except UnidentifiedImageError as exc:
        other = unsupported_format(data)
        if other is not None:
            raise ImageRejectedError(
                415, "unsupported_format", f"{other} images are not supported; send {_allowed_names()}"
            ) from exc
        raise ImageRejectedError(400, "not_an_image", f"not a supported image ({_allowed_names()})") from exc
    except Exception as exc:  # Pillow raises many types for malformed headers
        raise ImageRejectedError(400, "corrupt", f"cannot read the image header: {exc}") from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageRejectedError(400, "zero_size", f"image has zero dimensions ({width}x{height})")
    if width * height > max_pixels:
        raise ImageRejectedError(
            413, "too_large", f"image has {width * height} pixels, the limit is {max_pixels}"
        )
    if img.format not in MIME_TYPES:  # pragma: no cover - OPEN_FORMATS only yields these
        raise ImageRejectedError(415, "unsupported_format", f"{img.format} images are not supported")
    if img.format == "PNG":
        check_png_chunks(data)
    return img


def inspect(data: bytes | bytearray, max_pixels: int = MAX_PIXELS) -> ImageHeader:
    """Check an image from its header (no pixel decode): format, dimensions, pixel limit, PNG chunk CRCs.

    Returns ImageHeader(mime, width, height, format) with the stored (not EXIF-rotated) size. Raises
    ImageRejectedError with status 400 (empty, not an image, corrupt header or PNG chunk, zero size), 413
    (over ``max_pixels``) or 415 (a recognised format we do not take, e.g. HEIC).
    """
    with open_image(data, max_pixels) as img:
        fmt = str(img.format)
        return ImageHeader(MIME_TYPES[fmt], int(img.width), int(img.height), fmt)


def _allowed_names() -> str:
    return ", ".join(name for name in MIME_TYPES if name != "MPO")


# PASCAL VOC 2012, background first: the index of a class is its value in a mask. The one list of the
# product's classes (training builds the model with it, the board names labels and legends with it).
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip


def voc_palette(num_colors: int = 256) -> list[int]:
    """The PASCAL VOC colour map as a flat [r, g, b, ...] list of ``num_colors`` entries: the colours of the
    masks the handler writes, the previews the board blends and the training data's palette PNGs."""
    palette: list[int] = []
    for index in range(num_colors):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette
