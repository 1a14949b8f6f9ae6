"""Use cases of attachments: upload validation (size, type sniffed from the bytes, dimensions read by Pillow
without decoding the pixels), one transaction each, audit lines; and the ListPosts label filter.

An upload is committed as PENDING and the tagging worker is woken (board_server/tagging.py); the caller never
waits for the model.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from board_server import attachment_repository as repo
from board_server.database import Database
from board_server.errors import FailedPrecondition, FieldViolation, InvalidArgument
from board_server.models import FILENAME_MAX
from board_server.records import PostRecord
from board_server.service import Page, Violations, _page, audit_not_found, check_id, page_request

audit = logging.getLogger("board.audit")

LABEL_MAX = 100
DEFAULT_MIN_LABEL_FRACTION = 0.01

# Magic bytes → MIME type; the formats the segmentation handler decodes.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"BM", "image/bmp"),
)
_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-png": "image/png",
    "image/x-ms-bmp": "image/bmp",
    "image/x-bmp": "image/bmp",
    "image/tif": "image/tiff",
}
# Pillow's format name for each type, to check that the header parses as what the magic bytes promise.
_PIL_FORMATS = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/tiff": "TIFF",
    "image/bmp": "BMP",
    "image/webp": "WEBP",
}
SUPPORTED_TYPES = tuple(sorted(_PIL_FORMATS))


def sniff_type(data: bytes) -> str | None:
    """The image MIME type announced by the first bytes of ``data``; None when it is no supported image."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, mime in _SIGNATURES:
        if data.startswith(magic):
            return mime
    return None


def normalise_content_type(value: str) -> str:
    """Lower-case, without parameters, aliases folded (``image/jpg`` → ``image/jpeg``)."""
    base = value.split(";", 1)[0].strip().lower()
    return _ALIASES.get(base, base)


@dataclass(frozen=True)
class ImageInfo:
    content_type: str
    width: int
    height: int


def inspect_image(data: bytes, content_type: str, max_bytes: int) -> ImageInfo:
    """Validate an upload and read its size from the header; raise InvalidArgument naming the fields.

    Pillow only parses the header here (no pixel decode) and keeps its decompression-bomb guard: an image
    claiming more than twice ``Image.MAX_IMAGE_PIXELS`` is refused.
    """
    violations = Violations()
    if not data:
        violations.add("data", "must not be empty")
    elif len(data) > max_bytes:
        violations.add("data", f"must be at most {max_bytes} bytes (got {len(data)})")
    violations.raise_if_any()
    sniffed = sniff_type(data)
    if sniffed is None:
        violations.add("data", f"is not a supported image; send one of {', '.join(SUPPORTED_TYPES)}")
        violations.raise_if_any()
    assert sniffed is not None
    declared = normalise_content_type(content_type) if content_type else sniffed
    if declared != sniffed:
        violations.add("content_type", f"is {declared!r} but the data is {sniffed!r}")
        violations.raise_if_any()

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            pil_format = image.format
    except Image.DecompressionBombError as exc:
        raise InvalidArgument([FieldViolation("data", f"has too many pixels: {exc}")]) from exc
    except UnidentifiedImageError as exc:
        raise InvalidArgument([FieldViolation("data", f"is not a readable {sniffed} image")]) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidArgument([FieldViolation("data", f"is not a readable {sniffed} image: {exc}")]) from exc
    if pil_format != _PIL_FORMATS[sniffed]:
        violations.add("data", f"starts like {sniffed} but parses as {pil_format}")
    if width < 1 or height < 1:
        violations.add("data", f"has no pixels ({width}x{height})")
    violations.raise_if_any()
    return ImageInfo(sniffed, int(width), int(height))


@dataclass(frozen=True)
class LabelView:
    name: str
    fraction: float
    pixels: int


@dataclass(frozen=True)
class AttachmentView:
    """An attachment as the API shows it (no bytes)."""

    id: int
    post_id: int
    filename: str
    content_type: str
    size_bytes: int
    width: int
    height: int
    status: str
    labels: tuple[LabelView, ...]
    create_time: datetime
    update_time: datetime
    failure_reason: str
    model_arch: str
    model_weights: str
    model_sha256: str
    model_untrained: bool
    attempts: int


def _view(row: Any, labels: Sequence[tuple[str, float, int]]) -> AttachmentView:
    # A PENDING row may carry the last transient error as failure_reason; the API shows it only once FAILED.
    return AttachmentView(
        id=row.id,
        post_id=row.post_id,
        filename=row.filename,
        content_type=row.content_type,
        size_bytes=row.size_bytes,
        width=row.width,
        height=row.height,
        status=row.status,
        labels=tuple(LabelView(n, f, p) for n, f, p in labels),
        create_time=row.create_time,
        update_time=row.update_time,
        failure_reason=(row.failure_reason or "") if row.status == repo.FAILED else "",
        model_arch=row.model_arch or "",
        model_weights=row.model_weights or "",
        model_sha256=row.model_sha256 or "",
        model_untrained=bool(row.model_untrained),
        attempts=row.attempts,
    )


def _now() -> datetime:
    return datetime.now(UTC)


class AttachmentService:
    """Add, read, list and delete attachments; ``on_added`` wakes the tagging worker after each upload."""

    def __init__(self, db: Database, max_bytes: int, on_added: Callable[[], None] | None = None) -> None:
        self._db = db
        self._max_bytes = max_bytes
        self._on_added = on_added

    @audit_not_found
    def add_attachment(self, post_id: int, filename: str, content_type: str, data: bytes) -> AttachmentView:
        """Store an image as PENDING; raise InvalidArgument, PostNotFound."""
        violations = Violations()
        violations.row_id("post_id", post_id)
        violations.text("filename", filename, FILENAME_MAX)
        violations.raise_if_any()
        info = inspect_image(data, content_type, self._max_bytes)
        now = _now()
        values = {
            "post_id": post_id,
            "filename": filename,
            "content_type": info.content_type,
            "size_bytes": len(data),
            "width": info.width,
            "height": info.height,
            "data": data,
            "status": repo.PENDING,
            "attempts": 0,
            "next_attempt_time": now,
            "create_time": now,
            "update_time": now,
        }
        row = self._db.write(lambda conn: repo.add_attachment(conn, values))
        audit.info("Attachment created; id=%d; post_id=%d; bytes=%d", row.id, post_id, len(data))
        if self._on_added is not None:
            self._on_added()
        return _view(row, ())

    @audit_not_found
    def get_attachment(self, attachment_id: int) -> AttachmentView:
        """Return the attachment with its labels; raise InvalidArgument, AttachmentNotFound."""
        check_id("id", attachment_id)
        with self._db.read() as conn:
            row = repo.read_attachment(conn, attachment_id)
            labels = repo.read_labels(conn, [attachment_id])
        return _view(row, labels.get(attachment_id, ()))

    @audit_not_found
    def list_attachments(self, post_id: int) -> list[AttachmentView]:
        """The post's attachments ordered by id; raise InvalidArgument, PostNotFound."""
        check_id("post_id", post_id)
        with self._db.read() as conn:
            rows = repo.list_attachments(conn, post_id)
            labels = repo.read_labels(conn, [r.id for r in rows])
        return [_view(r, labels.get(r.id, ())) for r in rows]

    @audit_not_found
    def get_content(self, attachment_id: int) -> tuple[bytes, str]:
        """The uploaded bytes and MIME type; raise InvalidArgument, AttachmentNotFound."""
        check_id("id", attachment_id)
        with self._db.read() as conn:
            return repo.read_content(conn, attachment_id)

    @audit_not_found
    def get_mask(self, attachment_id: int) -> bytes:
        """The mask PNG; raise InvalidArgument, AttachmentNotFound, FailedPrecondition (not TAGGED yet)."""
        check_id("id", attachment_id)
        with self._db.read() as conn:
            status, png = repo.read_mask(conn, attachment_id)
        if status != repo.TAGGED or png is None:
            raise FailedPrecondition(
                f"attachment {attachment_id} is {status}; a mask exists once it is TAGGED"
            )
        return png

    @audit_not_found
    def delete_attachment(self, attachment_id: int) -> None:
        """Delete the attachment with its labels and mask; raise InvalidArgument, AttachmentNotFound."""
        check_id("id", attachment_id)
        self._db.write(lambda conn: repo.delete_attachment(conn, attachment_id))
        audit.info("Attachment deleted; id=%d", attachment_id)

    def list_posts_with_label(
        self, label: str, min_fraction: float, user_id: int, page_size: int, page_token: str
    ) -> Page[PostRecord]:
        """Posts with an attachment tagged ``label`` over ``min_fraction`` (0 → 1 %); InvalidArgument."""
        violations = Violations()
        violations.text("label", label, LABEL_MAX)
        if math.isnan(min_fraction) or not 0 <= min_fraction <= 1:
            violations.add("min_label_fraction", "must be between 0 and 1 (0 means 0.01)")
        if user_id < 0:
            violations.add("user_id", "must be a positive id, or 0 for every user")
        violations.raise_if_any()
        fraction = min_fraction or DEFAULT_MIN_LABEL_FRACTION
        # The filter is part of the token's list name, so a token is only valid for the same filter.
        resource = f"posts?label={label}&min={fraction!r}"
        request = page_request(resource, user_id, page_size, page_token)
        with self._db.read() as conn:
            rows = repo.list_posts_with_label(
                conn,
                label=label,
                min_fraction=fraction,
                user_id=user_id,
                after_id=request.after_id,
                limit=request.size + 1,
            )
        return _page(resource, user_id, rows, request, lambda p: p.id)
