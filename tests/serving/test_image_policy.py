"""seg_handler.image_policy: the one definition of what the board stores and the model segments."""

from __future__ import annotations

import struct
import zlib

import pytest

from seg_handler import image_policy
from tests.serving import corpus


@pytest.mark.parametrize("image", corpus.valid_images(), ids=lambda c: c.name)
def test_every_valid_image_passes_with_its_mime_type_and_stored_size(image: corpus.ValidImage) -> None:
    header = image_policy.inspect(image.data)
    assert header.mime in image_policy.ALLOWED_MIME_TYPES
    mime, width, height, _ = header
    stored = (height, width) if image.name in ("exif-rotated-6", "exif-rotated-8") else (width, height)
    assert (mime, *stored) == (header.mime, image.width, image.height)


def test_a_phones_mpo_is_a_jpeg() -> None:
    mpo = corpus.encode(corpus.rgb(37, 23), "MPO", save_all=True, append_images=[corpus.rgb(37, 23, 1)])
    header = image_policy.inspect(mpo)
    assert header == ("image/jpeg", 37, 23, "MPO")


# Bad inputs whose headers are whole: only decoding their pixels shows the damage, which inspect (headers
# only) leaves to the handler's decode_image (tests/serving/test_handler_functions.py).
PIXEL_DAMAGE = {"jpeg-truncated-half", "png-no-pixel-data", "gif-truncated"}
HEADER_DAMAGE = [bad for bad in corpus.bad_inputs() if bad.name not in PIXEL_DAMAGE]


def test_the_inputs_left_to_the_decode_are_in_the_corpus() -> None:
    assert {bad.name for bad in corpus.bad_inputs()} >= PIXEL_DAMAGE  # a renamed case is not skipped


@pytest.mark.parametrize("bad", HEADER_DAMAGE, ids=lambda c: c.name)
def test_header_level_rejections_agree_with_the_handler(bad: corpus.BadInput) -> None:
    with pytest.raises(image_policy.ImageRejectedError) as rejected:
        image_policy.inspect(bad.data)
    exc = rejected.value
    assert exc.status == bad.status, (exc.code, exc.message)
    assert exc.body() == {"error": exc.message, "code": exc.code, "status": exc.status}


@pytest.mark.parametrize(
    "bad", [bad for bad in corpus.bad_inputs() if bad.name in PIXEL_DAMAGE], ids=lambda c: c.name
)
def test_damage_only_the_pixels_show_passes_the_header_check_and_fails_the_decode(
    bad: corpus.BadInput,
) -> None:
    header = image_policy.inspect(bad.data)
    assert (header.width, header.height) == (64, 48)  # the corpus's size, read from the intact header
    with image_policy.open_image(bad.data) as image, pytest.raises(OSError):
        image.load()  # Pillow refuses the pixels, so the handler answers 400 for them


@pytest.mark.parametrize("chunk", [b"IHDR", b"tEXt", b"IDAT", b"IEND"])
def test_a_bad_crc_in_any_png_chunk_is_corrupt(chunk: bytes) -> None:
    bad = corpus.png_with_bad_crc(chunk)
    with pytest.raises(image_policy.ImageRejectedError) as raised:
        image_policy.check_png_chunks(bad)
    assert (raised.value.status, raised.value.code) == (400, "corrupt")
    assert repr(chunk) in raised.value.message
    with pytest.raises(image_policy.ImageRejectedError):
        image_policy.inspect(bad)


def test_every_chunk_of_a_valid_png_passes_the_crc_check() -> None:
    for image in corpus.valid_images():
        if image.data.startswith(b"\x89PNG"):
            image_policy.check_png_chunks(image.data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n",  # signature only
        corpus.encode(corpus.rgb(8, 8), "PNG")[:-12],  # no IEND
        corpus.encode(corpus.rgb(8, 8), "PNG")[:40],  # a chunk cut short
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 0xFFFFFFF0) + b"IDAT",  # absurd length
    ],
)
def test_a_truncated_png_chunk_stream_is_corrupt(data: bytes) -> None:
    with pytest.raises(image_policy.ImageRejectedError) as raised:
        image_policy.check_png_chunks(data)
    assert raised.value.code == "corrupt"


def test_data_after_iend_is_not_read() -> None:
    image_policy.check_png_chunks(corpus.encode(corpus.rgb(8, 8), "PNG") + b"trailing bytes")


def test_the_pixel_limit_is_checked_on_the_header_alone() -> None:
    huge = corpus.png_header_only(10_000, 4_001)  # 40,010,000 pixels, no pixel data
    with pytest.raises(image_policy.ImageRejectedError) as raised:
        image_policy.inspect(huge)
    assert (raised.value.status, raised.value.code) == (413, "too_large")
    assert image_policy.inspect(corpus.png_header_only(10_000, 4_000)).width == 10_000
    with pytest.raises(image_policy.ImageRejectedError):
        image_policy.inspect(corpus.png_header_only(100, 100), max_pixels=9_999)


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (corpus.heic_header(), "HEIC"),
        (corpus.encode(corpus.rgb(16, 16), "ICO"), "ICO"),
        (corpus.encode(corpus.rgb(16, 16), "PPM"), "PNM"),
        (b"8BPS\x00\x01" + b"\x00" * 40, "PSD"),
    ],
)
def test_recognised_unsupported_formats_are_415_naming_the_format(data: bytes, name: str) -> None:
    assert image_policy.unsupported_format(data) == name
    with pytest.raises(image_policy.ImageRejectedError) as raised:
        image_policy.inspect(data)
    assert (raised.value.status, raised.value.code) == (415, "unsupported_format")
    assert name in raised.value.message


def test_the_crc_is_the_one_zlib_computes_over_type_and_data() -> None:
    chunk = b"IEND"
    assert zlib.crc32(chunk) == 0xAE426082  # the well-known IEND CRC, as the PNG spec gives it
