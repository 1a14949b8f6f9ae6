"""Images built in memory for the serving tests: valid ones of every accepted format/mode, and bad inputs."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, PngImagePlugin


@dataclass(frozen=True)
class ValidImage:
    name: str
    data: bytes
    width: int  # as displayed (EXIF applied)
    height: int


@dataclass(frozen=True)
class BadInput:
    name: str
    data: bytes
    status: int  # 400, 413 or 415
    content_type: str = "application/octet-stream"


def _noise(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **params)
    return out.getvalue()


def rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(_noise(width, height, seed), "RGB")


def exif_rotated_jpeg(width: int, height: int, orientation: int = 6) -> bytes:
    """A JPEG stored ``width``x``height`` whose EXIF says rotate (6/8 swap the displayed sides)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(rgb(width, height), "JPEG", exif=exif.tobytes())


def png_16bit(width: int, height: int) -> bytes:
    arr = (np.arange(width * height, dtype=np.uint32).reshape(height, width) * 97 % 65536).astype(np.uint16)
    return encode(Image.fromarray(arr), "PNG")


def animated_gif(width: int, height: int) -> bytes:
    frames = [rgb(width, height, seed).convert("P") for seed in range(3)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return out.getvalue()


def valid_images() -> list[ValidImage]:
    """One of each accepted format and mode, plus extreme shapes and EXIF rotation."""
    base = rgb(37, 23)
    palette_transparent = base.convert("P")
    palette_transparent.info["transparency"] = 0
    cases = [
        ("jpeg-rgb", encode(base, "JPEG", quality=90), 37, 23),
        ("jpeg-progressive", encode(base, "JPEG", progressive=True), 37, 23),
        ("jpeg-cmyk", encode(base.convert("CMYK"), "JPEG"), 37, 23),
        ("jpeg-grayscale", encode(base.convert("L"), "JPEG"), 37, 23),
        ("png-rgb", encode(base, "PNG"), 37, 23),
        ("png-rgba", encode(base.convert("RGBA"), "PNG"), 37, 23),
        ("png-l", encode(base.convert("L"), "PNG"), 37, 23),
        ("png-la", encode(base.convert("LA"), "PNG"), 37, 23),
        ("png-palette", encode(base.convert("P"), "PNG"), 37, 23),
        ("png-palette-transparent", encode(palette_transparent, "PNG"), 37, 23),
        ("png-16bit", png_16bit(37, 23), 37, 23),
        ("png-1bit", encode(base.convert("1"), "PNG"), 37, 23),
        ("gif-animated", animated_gif(37, 23), 37, 23),
        ("mpo-phone-jpeg", encode(base, "MPO", save_all=True, append_images=[rgb(37, 23, 1)]), 37, 23),
        ("bmp", encode(base, "BMP"), 37, 23),
        ("webp", encode(base, "WEBP"), 37, 23),
        ("tiff", encode(base, "TIFF"), 37, 23),
        ("tiff-16bit", encode(Image.open(io.BytesIO(png_16bit(37, 23))), "TIFF"), 37, 23),
        ("1x1", encode(rgb(1, 1), "PNG"), 1, 1),
        ("4000x8", encode(rgb(4000, 8), "PNG"), 4000, 8),
        ("8x4000", encode(rgb(8, 4000), "PNG"), 8, 4000),
        ("exif-rotated-6", exif_rotated_jpeg(40, 20, 6), 20, 40),
        ("exif-rotated-8", exif_rotated_jpeg(40, 20, 8), 20, 40),
        ("exif-mirrored-2", exif_rotated_jpeg(40, 20, 2), 40, 20),
        ("large-1600x1200", encode(rgb(1600, 1200), "JPEG", quality=85), 1600, 1200),
    ]
    return [ValidImage(name, data, w, h) for name, data, w, h in cases]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width``x``height`` and carries one empty IDAT (no pixel data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b""))
        + _png_chunk(b"IEND", b"")
    )


def bomb_png(width: int, height: int) -> bytes:
    """A real 1-bit PNG of ``width``x``height`` zeros: a few KB that decode to ``width*height`` pixels."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def png_with_bad_crc(chunk: bytes, data: bytes | None = None) -> bytes:
    """A valid PNG (a small noise image, with a tEXt chunk) whose first ``chunk`` has its CRC flipped; the
    chunk's data is intact, so only a CRC check can tell."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "made by the test corpus")
    png = bytearray(data if data is not None else encode(rgb(64, 48), "PNG", pnginfo=info))
    offset = 8
    while offset < len(png):
        (length,) = struct.unpack_from(">I", png, offset)
        if bytes(png[offset + 4 : offset + 8]) == chunk:
            png[offset + 8 + length] ^= 0xFF
            return bytes(png)
        offset += 12 + length
    raise ValueError(f"no {chunk!r} chunk")


def heic_header() -> bytes:
    """The first box of an iPhone HEIC file (ISO-BMFF ftyp, brand heic): recognised, not supported."""
    return struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic" + b"\x00" * 64


def _zip_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("a.txt", "hello")
    return out.getvalue()


def bad_inputs(max_pixels: int = 40_000_000) -> list[BadInput]:
    """At least 30 inputs that must each be refused with a 4xx, never crash a worker."""
    jpeg = encode(rgb(64, 48), "JPEG")
    png = encode(rgb(64, 48), "PNG")
    gif = encode(rgb(64, 48).convert("P"), "GIF")
    webp = encode(rgb(64, 48), "WEBP")
    tiff = encode(rgb(64, 48), "TIFF")
    bmp = encode(rgb(64, 48), "BMP")
    bad_crc = bytearray(png)
    bad_crc[40] ^= 0xFF
    side = int((max_pixels * 1.2) ** 0.5) + 1  # over the limit, under Pillow's 2x error threshold
    cases = [
        BadInput("empty", b"", 400),
        BadInput("text", b"hello, world", 400),
        BadInput("text-plain-content-type", b"hello, world", 400, "text/plain"),
        BadInput("html", b"<!doctype html><html><body>hi</body></html>", 400, "text/html"),
        BadInput("json-bytes", b'{"data": "not an image"}', 400),
        BadInput("json-content-type", b'{"data": "not an image"}', 400, "application/json"),
        BadInput("pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n", 400),
        BadInput("zip", _zip_bytes(), 400),
        BadInput("gzip", zlib.compress(b"x" * 100), 400),
        BadInput("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', 400),
        BadInput("elf", b"\x7fELF\x02\x01\x01" + b"\x00" * 57, 400),
        BadInput("mp3-id3", b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\x00" * 64, 400),
        BadInput("single-zero-byte", b"\x00", 400),
        BadInput("random-bytes", np.random.default_rng(1).bytes(4096), 400),
        BadInput("jpeg-soi-only", b"\xff\xd8", 400),
        BadInput("jpeg-header-only", jpeg[:200], 400),
        BadInput("jpeg-truncated-half", jpeg[: len(jpeg) // 2], 400),
        BadInput("jpeg-garbage-after-soi", b"\xff\xd8\xff" + np.random.default_rng(2).bytes(500), 400),
        BadInput("png-signature-only", png[:8], 400),
        BadInput("png-truncated-half", png[: len(png) // 2], 400),
        BadInput("png-damaged-idat-data", bytes(bad_crc), 400),
        BadInput("png-idat-bad-crc", png_with_bad_crc(b"IDAT"), 400),
        BadInput("png-ihdr-bad-crc", png_with_bad_crc(b"IHDR"), 400),
        BadInput("png-text-bad-crc", png_with_bad_crc(b"tEXt"), 400),
        BadInput("png-iend-bad-crc", png_with_bad_crc(b"IEND"), 400),
        BadInput("png-no-pixel-data", png_header_only(64, 48), 400),
        BadInput("png-zero-width", png_header_only(0, 48), 400),
        BadInput("gif-truncated", gif[: len(gif) // 2], 400),
        BadInput("webp-truncated", webp[: len(webp) // 2], 400),
        BadInput("tiff-header-only", tiff[:8], 400),
        BadInput("bmp-truncated", bmp[:40], 400),
        BadInput("ico-unsupported", encode(rgb(16, 16), "ICO"), 415),
        BadInput("ppm-unsupported", encode(rgb(16, 16), "PPM"), 415),
        BadInput("sgi-unsupported", encode(rgb(16, 16), "SGI"), 415),
        BadInput("heic-unsupported", heic_header(), 415),
        # No reliable magic bytes: not told apart from random bytes.
        BadInput("tga-unsupported", encode(rgb(16, 16), "TGA"), 400),
        BadInput("pcx-unsupported", encode(rgb(16, 16), "PCX"), 400),
        BadInput("over-pixel-limit", bomb_png(side, side), 413),
        BadInput("decompression-bomb", bomb_png(20_000, 20_000), 413),
        BadInput("huge-declared-size", png_header_only(100_000, 100_000), 413),
    ]
    return cases
