"""GetAttachmentPreview through a real board server, on SQLite and on PostgreSQL: the size (longer side at
most ``max_size``, aspect kept, never enlarged), JPEG and WebP, EXIF orientation, the cache (a second call is
served from the attachment_previews row), the overlay (FAILED_PRECONDITION before TAGGED; after, the VOC
colours blended where the mask has a class and a legend in the top-left corner) and INVALID_ARGUMENT for a
bad ``max_size`` or ``content_type``.

No TorchServe here: the attachment is marked TAGGED with a mask written straight into the database
(tests/board/test_search_rpc.py's ``tag_directly``), as the tagger stores it: a palette PNG of class indices
at the image's displayed size. The end-to-end tests render overlays of real masks.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import cast

import grpc
import pytest
from PIL import Image, ImageChops, ImageStat
from sqlalchemy import Table, select, update

from board_server.storage.engine import Database, open_database
from board_server.storage.tables import AttachmentPreview
from clients.board import (
    BoardClient,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from tests.board.conftest import Member, RunningServer
from tests.board.test_search_rpc import tag_directly

PREVIEWS = cast(Table, AttachmentPreview.__table__)
GREY = (128, 128, 128)
DOG, DOG_COLOUR = 12, (64, 0, 128)  # the VOC class index and its colour in the VOC palette
ALPHA = 0.45  # board_server.domain.previews.OVERLAY_ALPHA


def encoded(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def half_mask(size: tuple[int, int], index: int) -> bytes:
    """A palette PNG of class indices, 0 (background) on the left half and ``index`` on the right, with a
    full 256-entry palette as the tagger writes it (with a short one, Pillow would renumber the indices)."""
    mask = Image.new("P", size, 0)
    mask.putpalette([v for i in range(256) for v in (i, i, i)])
    mask.paste(index, (size[0] // 2, 0, size[0], size[1]))
    return encoded(mask, "PNG", optimize=False)


@pytest.fixture(scope="module")
def uploader(board_server: RunningServer) -> Iterator[Member]:
    member = board_server.sign_up("Photographer")
    yield member
    member.client.close()


@pytest.fixture(scope="module")
def database(board_server: RunningServer) -> Iterator[Database]:
    """The server's database, for reading the cache rows."""
    db = open_database(board_server.database_url)
    yield db
    db.dispose()


def upload(member: Member, data: bytes, name: str = "photo.jpg") -> int:
    post_id = member.client.create_post(member.id, "preview", "of a photo").id
    return member.client.add_attachment(post_id, name, data).id


@pytest.fixture(scope="module")
def wide(uploader: Member) -> int:
    """A 400×160 grey JPEG (stored upright)."""
    return upload(uploader, encoded(Image.new("RGB", (400, 160), GREY)))


# --- size and format ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_size", "content_type", "expected"),
    [
        (100, "image/jpeg", ((100, 40), "JPEG")),
        (100, "", ((100, 40), "JPEG")),
        (250, "image/webp", ((250, 100), "WEBP")),
        (16, "IMAGE/WEBP", ((16, 6), "WEBP")),
        (0, "", ((400, 160), "JPEG")),  # 0 means 512: never larger than the image
        (2048, "image/jpeg", ((400, 160), "JPEG")),
    ],
)
def test_a_preview_fits_max_size_keeps_the_aspect_and_has_the_format_asked(
    uploader: Member, wide: int, max_size: int, content_type: str, expected: tuple[tuple[int, int], str]
) -> None:
    size, fmt = expected
    preview = uploader.client.get_attachment_preview(wide, max_size=max_size, content_type=content_type)
    image = decoded(preview.data)
    assert (image.format, image.size) == (fmt, size)
    assert (preview.width, preview.height) == size
    assert preview.content_type == f"image/{fmt.lower()}"
    assert max(size) <= (max_size or 512)


def test_anyone_may_read_a_preview(board_server: RunningServer, wide: int) -> None:
    with board_server.client() as anonymous:
        assert anonymous.get_attachment_preview(wide, max_size=64).width == 64


def test_exif_orientation_is_applied(uploader: Member) -> None:
    # Stored 200×100, red on the left and blue on the right; orientation 6: shown turned 90° clockwise,
    # so the viewer sees 100×200 with red on top.
    stored = Image.new("RGB", (200, 100), (220, 20, 20))
    stored.paste((20, 20, 220), (100, 0, 200, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    attachment_id = upload(uploader, encoded(stored, exif=exif.tobytes()))
    assert uploader.client.get_attachment(attachment_id).width == 200  # as stored
    preview = uploader.client.get_attachment_preview(attachment_id, max_size=50)
    image = decoded(preview.data).convert("RGB")
    assert image.size == (preview.width, preview.height) == (25, 50)
    top, bottom = image.getpixel((12, 10)), image.getpixel((12, 40))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 150 > top[2], f"top should be red, is {top}"
    assert bottom[2] > 150 > bottom[0], f"bottom should be blue, is {bottom}"


# --- the cache ----------------------------------------------------------------------------------------------


def test_a_preview_is_rendered_once_and_then_served_from_its_row(
    uploader: Member, database: Database
) -> None:
    attachment_id = upload(uploader, encoded(Image.new("RGB", (300, 300), GREY)))
    first = uploader.client.get_attachment_preview(attachment_id, max_size=128, content_type="image/webp")

    def rows() -> list[tuple[int, bool, str, bytes, int, int]]:
        with database.read() as conn:
            found = conn.execute(
                select(PREVIEWS.c.max_size, PREVIEWS.c.overlay, PREVIEWS.c.content_type, PREVIEWS.c.data,
                       PREVIEWS.c.width, PREVIEWS.c.height).where(PREVIEWS.c.attachment_id == attachment_id)
            ).all()  # fmt: skip
        return [(r[0], bool(r[1]), r[2], bytes(r[3]), r[4], r[5]) for r in found]

    assert rows() == [(128, False, "image/webp", first.data, 128, 128)]
    # Replace the cached bytes: the next call must return them, so it read the row instead of rendering.
    marker = encoded(Image.new("RGB", (128, 128), (1, 2, 3)), "WEBP")
    database.write(
        lambda conn: conn.execute(
            update(PREVIEWS).where(PREVIEWS.c.attachment_id == attachment_id).values(data=marker)
        )
    )
    again = uploader.client.get_attachment_preview(attachment_id, max_size=128, content_type="image/webp")
    assert again.data == marker
    assert (again.width, again.height, again.content_type) == (128, 128, "image/webp")
    # Another size of the ladder or another format is another row; a size between two of the ladder is
    # served from the next larger one, scaled down, and keeps nothing more.
    uploader.client.get_attachment_preview(attachment_id, max_size=60, content_type="image/webp")
    uploader.client.get_attachment_preview(attachment_id, max_size=120)
    between = uploader.client.get_attachment_preview(attachment_id, max_size=100, content_type="image/webp")
    assert (between.width, between.height) == (100, 100)
    assert sorted(r[:3] for r in rows()) == [
        (64, False, "image/webp"),
        (128, False, "image/jpeg"),
        (128, False, "image/webp"),
    ]


# --- the overlay --------------------------------------------------------------------------------------------


def test_an_overlay_needs_a_tagged_attachment_then_blends_the_mask_with_a_legend(
    board_server: RunningServer, uploader: Member
) -> None:
    client: BoardClient = uploader.client
    attachment_id = upload(uploader, encoded(Image.new("RGB", (400, 200), GREY)))
    with pytest.raises(FailedPreconditionError) as caught:
        client.get_attachment_preview(attachment_id, overlay=True)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "PENDING" in caught.value.message and "TAGGED" in caught.value.message

    tag_directly(
        board_server.database_url,
        attachment_id,
        {"background": 0.5, "dog": 0.5},
        mask_png=half_mask((400, 200), DOG),
    )
    plain = decoded(client.get_attachment_preview(attachment_id, max_size=400).data).convert("RGB")
    response = client.get_attachment_preview(attachment_id, max_size=400, overlay=True)
    overlay = decoded(response.data).convert("RGB")
    assert overlay.size == plain.size == (400, 200)

    tinted = overlay.getpixel((300, 120))
    assert isinstance(tinted, tuple)
    wanted = [round(g * (1 - ALPHA) + c * ALPHA) for g, c in zip(GREY, DOG_COLOUR, strict=True)]
    assert all(abs(a - b) <= 8 for a, b in zip(tinted, wanted, strict=True)), (tinted, wanted)

    def difference(box: tuple[int, int, int, int]) -> float:
        diff = ImageChops.difference(overlay.crop(box), plain.crop(box))
        return max(ImageStat.Stat(diff).mean)

    assert difference((60, 100, 180, 190)) < 3, "the background half is left untinted"
    assert difference((0, 0, 30, 12)) > 20, "a legend panel sits in the top-left corner"
    # WebP overlays too, each cached under its own key.
    webp = client.get_attachment_preview(attachment_id, max_size=200, overlay=True, content_type="image/webp")
    assert decoded(webp.data).format == "WEBP" and (webp.width, webp.height) == (200, 100)


# --- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_size", "content_type", "fields"),
    [
        (15, "", ["max_size"]),
        (2049, "image/jpeg", ["max_size"]),
        (-1, "", ["max_size"]),
        (100, "image/png", ["content_type"]),
        (100, "jpeg", ["content_type"]),
        (5000, "image/gif", ["max_size", "content_type"]),
    ],
)
def test_a_bad_size_or_format_is_invalid_argument(
    uploader: Member, wide: int, max_size: int, content_type: str, fields: list[str]
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        uploader.client.get_attachment_preview(wide, max_size=max_size, content_type=content_type)
    assert [v.field for v in caught.value.violations] == fields


def test_a_preview_of_a_missing_attachment_is_not_found(uploader: Member) -> None:
    with pytest.raises(NotFoundError):
        uploader.client.get_attachment_preview(2**62)
