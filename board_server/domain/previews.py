"""Attachment previews (GetAttachmentPreview): pure functions over Pillow, no database, no gRPC.

A preview is the image as a viewer displays it (EXIF orientation applied, any mode flattened to RGB with
transparency over white), scaled down so that its longer side is at most ``max_size`` (never up), encoded
as JPEG or WebP. With a mask (a palette PNG whose pixel values are class indices, as the tagger stores it)
the VOC colours of the classes are blended over the photo, background left untinted, with a small legend of
the classes present in the top-left corner.

Only the sizes of a short ladder (``LADDER``) are rendered from the photo and kept: a request is served
from the nearest kept size at or above what it asks (``ladder_size``), scaled down on the fly
(``scaled_down``), so that a client asking for every size in turn costs a few kept previews, not one each.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, ImageOps

from board_server.core.errors import FieldViolation, InvalidArgument
from seg_handler import image_policy

logger = logging.getLogger(__name__)

DEFAULT_MAX_SIZE = 512
MIN_MAX_SIZE, MAX_MAX_SIZE = 16, 2048
JPEG, WEBP = "image/jpeg", "image/webp"
CONTENT_TYPES = (JPEG, WEBP)
QUALITY = 85
OVERLAY_ALPHA = 0.45
# The sizes kept (longer side, px): a request is served from the smallest at or above it.
LADDER = (64, 128, 256, 512, 1024, MAX_MAX_SIZE)
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_LEGEND_PANEL = (0, 0, 0, 150)  # translucent black behind white text


@dataclass(frozen=True)
class Preview:
    """An encoded preview and its size in pixels."""

    data: bytes
    content_type: str
    width: int
    height: int


def preview_options(max_size: int, content_type: str) -> tuple[int, str]:
    """The request's ``max_size`` (0 → 512, else 16..2048) and ``content_type`` ("" → image/jpeg, or
    image/webp) as rendered; raises InvalidArgument naming each bad field."""
    violations = []
    size = max_size or DEFAULT_MAX_SIZE
    if not MIN_MAX_SIZE <= size <= MAX_MAX_SIZE:
        violations.append(
            FieldViolation("max_size", f"must be {MIN_MAX_SIZE}..{MAX_MAX_SIZE}, or 0 for {DEFAULT_MAX_SIZE}")
        )
    kind = content_type.strip().lower() or JPEG
    if kind not in CONTENT_TYPES:
        violations.append(FieldViolation("content_type", f"must be {JPEG} (the default) or {WEBP}"))
    if violations:
        raise InvalidArgument(violations)
    return size, kind


def render_preview(
    image: bytes, mask_png: bytes | None, max_size: int, content_type: str, class_names: Sequence[str]
) -> Preview:
    """Render ``image`` as a preview, with ``mask_png`` blended in and a legend when given.

    ``class_names`` names the mask's indices for the legend (an index beyond it is ``class_<i>``).
    Raises InvalidArgument for bad ``max_size``/``content_type``; OSError (Pillow's) for bytes that are not
    a readable image; ValueError for a mask that is not a palette or grey-level image of class indices.
    """
    size, kind = preview_options(max_size, content_type)
    photo, displayed = _displayed(image, size)
    if mask_png is not None:
        photo = _overlay(photo, displayed, mask_png, class_names)
    return _encoded(photo, kind)


def ladder_size(max_size: int) -> int:
    """The size of the ladder that serves a request for ``max_size`` (16..2048): the smallest at or above."""
    return next(size for size in LADDER if size >= max_size)


def scaled_down(preview: Preview, max_size: int) -> Preview:
    """``preview`` scaled so that its longer side is at most ``max_size``, in its own format; the same
    preview when it already fits. Raises OSError (Pillow's) for bytes that are not a readable image."""
    target = fit((preview.width, preview.height), max_size)
    if target == (preview.width, preview.height):
        return preview
    with Image.open(io.BytesIO(preview.data)) as raw:
        if raw.format == "JPEG":
            raw.draft("RGB", target)
        photo = raw.convert("RGB")
    return _encoded(photo.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0), preview.content_type)


def _encoded(photo: Image.Image, kind: str) -> Preview:
    out = io.BytesIO()
    if kind == WEBP:
        photo.save(out, format="WEBP", quality=QUALITY, method=4)
    else:
        photo.save(out, format="JPEG", quality=QUALITY, optimize=True)
    return Preview(out.getvalue(), kind, photo.width, photo.height)


def fit(size: tuple[int, int], max_size: int) -> tuple[int, int]:
    """``size`` scaled so that its longer side is at most ``max_size``, aspect kept; never enlarged."""
    width, height = size
    longer = max(width, height)
    if longer <= max_size:
        return width, height
    scale = max_size / longer
    return max(1, round(width * scale)), max(1, round(height * scale))


def _displayed(image: bytes, max_size: int) -> tuple[Image.Image, tuple[int, int]]:
    """The photo as displayed, scaled to fit ``max_size``; and its full displayed size (before scaling)."""
    with Image.open(io.BytesIO(image)) as raw:
        orientation = raw.getexif().get(0x0112, 1)
        stored = raw.size
        displayed = (stored[1], stored[0]) if orientation in _ROTATED else stored
        target = fit(displayed, max_size)
        if raw.format == "JPEG":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still covers the target: much faster.
            want = (target[1], target[0]) if orientation in _ROTATED else target
            raw.draft("RGB", want)
        upright = ImageOps.exif_transpose(raw)
        photo = _rgb(upright)
    if photo.size != target:
        photo = photo.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return photo, displayed


def _rgb(image: Image.Image) -> Image.Image:
    """Any mode as 8-bit RGB: transparency over white, 16-bit and float images stretched to 0..255."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        wide = image.convert("F")
        extrema = wide.getextrema()
        assert isinstance(extrema[0], float | int) and isinstance(extrema[1], float | int)
        low, high = float(extrema[0]), float(extrema[1])
        scale = 255.0 / (high - low) if high != low else 0.0
        image = wide.point(lambda v: (v - low) * scale).convert("L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    white = Image.new("RGB", rgba.size, (255, 255, 255))
    white.paste(rgba, mask=rgba.getchannel("A"))
    return white


def _overlay(
    photo: Image.Image, displayed: tuple[int, int], mask_png: bytes, class_names: Sequence[str]
) -> Image.Image:
    with Image.open(io.BytesIO(mask_png)) as raw:
        if raw.mode not in ("P", "L"):
            raise ValueError(f"a mask is a palette or grey-level image of class indices, not mode {raw.mode}")
        # The raw bytes are the class indices (a palette image's convert("L") would map them to colours).
        indices = Image.frombytes("L", raw.size, raw.tobytes())
    if indices.size != displayed:
        logger.warning(
            "mask is %s but the displayed image is %s: resized nearest-neighbour", indices.size, displayed
        )
    present = [(count, index) for index, count in enumerate(indices.histogram()) if count and index]
    if indices.size != photo.size:
        indices = indices.resize(photo.size, Image.Resampling.NEAREST)
    colours = indices.copy()
    colours.putpalette(_voc_palette())
    blended = Image.blend(photo, colours.convert("RGB"), OVERLAY_ALPHA)
    tinted = indices.point(lambda index: 255 if index else 0)
    result = photo.copy()
    result.paste(blended, mask=tinted)
    names = [
        class_names[i] if i < len(class_names) else f"class_{i}" for _, i in sorted(present, reverse=True)
    ]
    indices_present = [i for _, i in sorted(present, reverse=True)]
    _draw_legend(result, list(zip(indices_present, names, strict=True)))
    return result


def _draw_legend(image: Image.Image, entries: list[tuple[int, str]]) -> None:
    """Swatch + name of each class (largest first) on a translucent panel in the top-left corner, sized to
    the image (10..18 px text); as many rows as fit, the rest summed up as "+N more"."""
    if not entries:
        return
    text_px = max(10, min(18, round(min(image.size) * 0.045)))
    pad, row = max(2, text_px // 4), text_px + max(2, text_px // 4)
    rows = (image.height - 2 * pad) // row
    if rows < 1 or image.width < 3 * text_px:
        logger.debug("preview %s too small for a legend", image.size)
        return
    if len(entries) > rows:
        hidden = len(entries) - rows + 1
        shown: list[tuple[int | None, str]] = [*entries[: rows - 1], (None, f"+{hidden} more")]
    else:
        shown = list(entries)
    font = _font(text_px)
    panel = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(panel)
    text_width = max(draw.textlength(name, font=font) for _, name in shown)
    right = min(image.width, round(pad * 3 + text_px + text_width))
    draw.rectangle((0, 0, right, pad * 2 + row * len(shown) - (row - text_px)), fill=_LEGEND_PANEL)
    palette = _voc_palette()
    for i, (index, name) in enumerate(shown):
        top = pad + i * row
        if index is not None:
            colour = tuple(palette[index * 3 : index * 3 + 3])
            draw.rectangle(
                (pad, top, pad + text_px - 1, top + text_px - 1), fill=(*colour, 255), outline="white"
            )
        draw.text((pad * 2 + text_px, top + text_px / 2), name, fill="white", font=font, anchor="lm")
    composed = Image.alpha_composite(image.convert("RGBA"), panel).convert("RGB")
    image.paste(composed)


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled font: scalable with FreeType, a fixed small bitmap font without it.
    return ImageFont.load_default(size=size)


@functools.cache
def _voc_palette() -> list[int]:
    """The PASCAL VOC colour map of the tagger's mask PNGs (seg_handler.image_policy: torch-free)."""
    return image_policy.voc_palette()
