"""What an upload must be: size, type sniffed from the bytes (never trusted from the request), dimensions read
from the header without decoding the pixels. The image rules themselves are the segmentation handler's
(seg_handler/image_policy.py): what the board stores, the model can read."""

from __future__ import annotations

from dataclasses import dataclass

from board_server.core.errors import FieldViolation, InvalidArgument, excerpt
from board_server.domain.validation import Violations
from seg_handler import image_policy

_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-png": "image/png",
    "image/x-ms-bmp": "image/bmp",
    "image/x-bmp": "image/bmp",
    "image/tif": "image/tiff",
}


def normalise_content_type(value: str) -> str:
    """Lower-case, without parameters, aliases folded (``image/jpg`` → ``image/jpeg``)."""
    base = value.split(";", 1)[0].strip().lower()
    return _ALIASES.get(base, base)


@dataclass(frozen=True)
class ImageInfo:
    content_type: str
    width: int
    height: int


def check_upload_size(size: int, max_bytes: int) -> None:
    """Raise InvalidArgument for an upload of ``size`` bytes that is empty or over ``max_bytes`` (the check
    a streamed upload makes from its declared length before reading it)."""
    violations = Violations()
    if size <= 0:
        violations.add("data", "must not be empty")
    elif size > max_bytes:
        violations.add("data", f"must be at most {max_bytes} bytes (got {size})")
    violations.raise_if_any()


def inspect_image(data: bytes, content_type: str, max_bytes: int) -> ImageInfo:
    """Validate an upload and read its size from the header; raise InvalidArgument naming the fields."""
    check_upload_size(len(data), max_bytes)
    violations = Violations()
    try:
        header = image_policy.inspect(data)
    except image_policy.ImageRejectedError as exc:
        raise InvalidArgument(
            [FieldViolation("data", f"is not an image we take ({exc.code}): {exc.message}")]
        ) from exc
    declared = normalise_content_type(content_type) if content_type else header.mime
    if declared != header.mime:
        violations.add("content_type", f"is {excerpt(declared)} but the data is {header.mime!r}")
    violations.raise_if_any()
    return ImageInfo(header.mime, header.width, header.height)
