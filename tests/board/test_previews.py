"""Attachment previews (board_server/domain/previews.py): size, format, orientation, modes, overlay colours
and the legend, checked by decoding what render_preview encodes."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image, ImageStat

from board_server.core.errors import InvalidArgument
from board_server.domain.previews import (
    DEFAULT_MAX_SIZE,
    OVERLAY_ALPHA,
    Preview,
    fit,
    preview_options,
    render_preview,
)
from seg_handler.handler import encode_png
from seg_handler.image_policy import VOC_CLASSES

VOC = VOC_CLASSES
DOG, PERSON = 12, 15
# The published PASCAL VOC colours of these classes.
DOG_RGB, PERSON_RGB = (64, 0, 128), (192, 128, 128)
WHITE = (255, 255, 255)
Box = tuple[int, int, int, int]


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def photo(size: tuple[int, int] = (200, 100), colour: tuple[int, ...] = WHITE, fmt: str = "JPEG") -> bytes:
    return encode(Image.new("RGB", size, colour), fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def mask(size: tuple[int, int], regions: list[tuple[Box, int]]) -> bytes:
    """A mask as the tagger stores it: the segmentation handler's own palette PNG of class indices."""
    indices = np.zeros((size[1], size[0]), dtype=np.uint8)
    for (left, top, right, bottom), index in regions:
        indices[top:bottom, left:right] = index
    return encode_png(indices)


def decoded(preview: Preview) -> Image.Image:
    image = Image.open(io.BytesIO(preview.data))
    image.load()
    assert image.size == (preview.width, preview.height)
    return image.convert("RGB")


def mean(image: Image.Image, box: Box) -> tuple[float, float, float]:
    r, g, b = ImageStat.Stat(image.crop(box)).mean
    return r, g, b


def close(actual: tuple[float, ...], wanted: tuple[float, ...], tolerance: float = 10) -> bool:
    return all(abs(a - w) <= tolerance for a, w in zip(actual, wanted, strict=True))


def blend(base: tuple[int, int, int], colour: tuple[int, int, int]) -> tuple[float, ...]:
    return tuple(b * (1 - OVERLAY_ALPHA) + c * OVERLAY_ALPHA for b, c in zip(base, colour, strict=True))


# --- size and format ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "max_size", "wanted"),
    [
        ((1200, 800), 300, (300, 200)),
        ((800, 1200), 300, (200, 300)),
        ((1001, 7), 100, (100, 1)),
        ((5, 5), 16, (5, 5)),
    ],
)
def test_the_longer_side_fits_max_size_with_the_aspect_kept(
    size: tuple[int, int], max_size: int, wanted: tuple[int, int]
) -> None:
    assert fit(size, max_size) == wanted
    preview = render_preview(photo(size), None, max_size, "image/jpeg", VOC)
    assert (preview.width, preview.height) == wanted
    assert decoded(preview).size == wanted


def test_a_small_image_is_never_enlarged_and_defaults_apply() -> None:
    preview = render_preview(photo((120, 90), fmt="PNG"), None, 0, "", VOC)
    assert (preview.width, preview.height, preview.content_type) == (120, 90, "image/jpeg")
    assert Image.open(io.BytesIO(preview.data)).format == "JPEG"
    big = render_preview(photo((2000, 1000)), None, 0, "", VOC)
    assert (big.width, big.height) == (DEFAULT_MAX_SIZE, DEFAULT_MAX_SIZE // 2)


@pytest.mark.parametrize(("content_type", "pil_format"), [("image/jpeg", "JPEG"), ("image/webp", "WEBP")])
def test_each_format_decodes_back_with_its_colours(content_type: str, pil_format: str) -> None:
    preview = render_preview(photo((300, 200), (200, 40, 30)), None, 150, content_type, VOC)
    assert preview.content_type == content_type
    assert Image.open(io.BytesIO(preview.data)).format == pil_format
    image = decoded(preview)
    assert image.size == (150, 100)
    assert close(mean(image, (40, 30, 110, 70)), (200, 40, 30))


def test_exif_orientation_is_applied() -> None:
    # Stored 200x100, left half red, right half blue; orientation 6 = displayed turned 90° clockwise:
    # 100x200 with red on top.
    stored = Image.new("RGB", (200, 100), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 100, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    preview = render_preview(data, None, 512, "image/jpeg", VOC)
    assert (preview.width, preview.height) == (100, 200)
    image = decoded(preview)
    assert close(mean(image, (20, 20, 80, 80)), (255, 0, 0), 25)
    assert close(mean(image, (20, 120, 80, 180)), (0, 0, 255), 25)
    # Scaled too: the swap is taken into account when fitting.
    small = render_preview(data, None, 50, "image/webp", VOC)
    assert (small.width, small.height) == (25, 50)


def _modes() -> list[tuple[str, bytes]]:
    rgba = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (0, 0, 20, 20))
    la = Image.new("LA", (40, 20), (0, 0))
    la.paste((0, 255), (0, 0, 20, 20))
    palette = Image.new("P", (40, 20), 1)
    palette.putpalette([0, 0, 0, 9, 9, 9] + [0] * 762)
    palette.paste(0, (0, 0, 20, 20))
    wide = Image.new("I;16", (40, 20), 0)
    wide.paste(60000, (20, 0, 40, 20))
    return [
        ("RGBA", encode(rgba)),
        ("LA", encode(la)),
        ("P+transparency", encode(palette, transparency=1)),
        ("I;16", encode(wide)),
        (
            "CMYK",
            encode(Image.new("CMYK", (40, 20), (0, 0, 0, 255)).crop((0, 0, 20, 20)).resize((40, 20)), "JPEG"),
        ),
        ("1", encode(Image.new("1", (40, 20), 0).crop((0, 0, 40, 20)), "PNG")),
    ]


@pytest.mark.parametrize(("mode", "data"), _modes(), ids=[m for m, _ in _modes()])
def test_any_mode_becomes_rgb_with_transparency_over_white(mode: str, data: bytes) -> None:
    image = decoded(render_preview(data, None, 40, "image/webp", VOC))
    assert image.size == (40, 20)
    left, right = mean(image, (4, 4, 16, 16)), mean(image, (24, 4, 36, 16))
    if mode in ("RGBA", "LA", "P+transparency"):
        assert close(left, (0, 0, 0), 20) and close(right, WHITE, 20)  # transparent right half over white
    elif mode == "I;16":
        assert close(left, (0, 0, 0), 20) and close(right, WHITE, 20)  # 16-bit range stretched to 8 bits
    else:
        assert close(left, (0, 0, 0), 20) and close(right, (0, 0, 0), 20)


# --- overlay and legend -------------------------------------------------------------------------------------

RIGHT_HALF_DOG = [((100, 0, 200, 100), DOG)]


@pytest.mark.parametrize("content_type", ["image/jpeg", "image/webp"])
def test_a_known_mask_region_is_tinted_with_its_voc_colour_and_background_is_not(content_type: str) -> None:
    image = decoded(render_preview(photo(), mask((200, 100), RIGHT_HALF_DOG), 512, content_type, VOC))
    assert close(mean(image, (130, 30, 190, 90)), blend(WHITE, DOG_RGB))
    assert close(mean(image, (40, 40, 90, 90)), WHITE, 6)


def test_the_legend_shows_the_classes_present_largest_first_and_only_with_overlay() -> None:
    regions = [((100, 0, 200, 100), DOG), ((0, 60, 40, 100), PERSON)]
    plain = decoded(render_preview(photo(), None, 512, "image/webp", VOC))
    shown = decoded(render_preview(photo(), mask((200, 100), regions), 512, "image/webp", VOC))
    # No legend without the overlay: the corner is the white photo.
    assert close(mean(plain, (0, 0, 30, 30)), WHITE, 6)
    # With it: a translucent dark panel, a dog swatch on the first row, a person swatch below it (the dog
    # covers more of the photo); text is 10 px at this size, so a swatch spans about 3..11 px.
    assert mean(shown, (0, 0, 30, 30))[0] < 200
    assert close(mean(shown, (4, 4, 9, 9)), DOG_RGB, 16)
    assert close(mean(shown, (4, 16, 9, 21)), PERSON_RGB, 16)
    # Classes absent from the mask have no row: the panel ends after two.
    assert close(mean(shown, (2, 34, 12, 40)), WHITE, 10)


def test_a_mask_of_background_only_draws_no_legend_and_no_tint() -> None:
    preview = render_preview(photo(), mask((200, 100), []), 512, "image/jpeg", VOC)
    assert close(mean(decoded(preview), (0, 0, 200, 100)), WHITE, 4)


def test_a_legend_is_still_drawn_on_a_small_preview() -> None:
    preview = render_preview(
        photo((800, 400)), mask((800, 400), [((400, 0, 800, 400), DOG)]), 64, "image/webp", VOC
    )
    image = decoded(preview)
    assert image.size == (64, 32)
    assert close(mean(image, (4, 4, 9, 9)), DOG_RGB, 24)


def test_many_classes_on_a_short_preview_end_with_a_summary_row() -> None:
    regions = [((i * 10, 0, i * 10 + 10, 100), i) for i in range(1, 21)]
    image = decoded(render_preview(photo(), mask((200, 100), regions), 60, "image/webp", VOC))
    assert image.size == (60, 30)  # two rows fit: one class, then "+19 more"


def test_a_mask_of_another_size_is_resized_nearest_neighbour_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="board_server.domain.previews"):
        preview = render_preview(photo(), mask((50, 25), [((25, 0, 50, 25), DOG)]), 512, "image/jpeg", VOC)
    assert "mask is (50, 25) but the displayed image is (200, 100)" in caplog.text
    image = decoded(preview)
    assert close(mean(image, (130, 30, 190, 90)), blend(WHITE, DOG_RGB))
    assert close(mean(image, (40, 40, 90, 90)), WHITE, 6)


def test_the_mask_is_in_display_orientation_like_the_photo() -> None:
    stored = Image.new("RGB", (200, 100), WHITE)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    # The handler's masks follow the displayed image: 100x200, dog in the bottom half.
    preview = render_preview(data, mask((100, 200), [((0, 100, 100, 200), DOG)]), 512, "image/jpeg", VOC)
    image = decoded(preview)
    assert close(mean(image, (20, 130, 80, 190)), blend(WHITE, DOG_RGB))
    assert close(mean(image, (40, 50, 90, 90)), WHITE, 6)


def test_a_mask_that_is_not_class_indices_is_refused() -> None:
    with pytest.raises(ValueError, match="not mode RGB"):
        render_preview(photo(), photo(fmt="PNG"), 512, "image/jpeg", VOC)


# --- request validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_size", "content_type", "options"),
    [
        (0, "", (512, "image/jpeg")),
        (16, "image/webp", (16, "image/webp")),
        (2048, "IMAGE/JPEG", (2048, "image/jpeg")),
    ],
)
def test_valid_options(max_size: int, content_type: str, options: tuple[int, str]) -> None:
    assert preview_options(max_size, content_type) == options


@pytest.mark.parametrize(
    ("max_size", "content_type", "fields"),
    [
        (15, "", ["max_size"]),
        (2049, "image/webp", ["max_size"]),
        (-1, "", ["max_size"]),
        (100, "image/png", ["content_type"]),
        (1, "image/gif", ["max_size", "content_type"]),
    ],
)
def test_invalid_options_are_invalid_argument(max_size: int, content_type: str, fields: list[str]) -> None:
    with pytest.raises(InvalidArgument) as caught:
        render_preview(photo(), None, max_size, content_type, VOC)
    assert [v.field for v in caught.value.violations] == fields


def test_bytes_that_are_no_image_raise_oserror() -> None:
    with pytest.raises(OSError):
        render_preview(b"not an image", None, 512, "image/jpeg", VOC)
