"""Chunked uploads (UploadAttachment): what can be refused is refused before the bytes it would cost.

In order: the caller must be signed in before a byte of the body is read; the metadata (post, file name,
declared size) is checked, and the post looked at (it exists, is the caller's, has room, its author's storage
quota holds the declared size), before any chunk; the size limit holds while the chunks arrive, so an upload
that grows past it is ended at that chunk. The assembled image then goes through
``AttachmentService.add_attachment`` like any other (validation, quotas, audit line).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from board_server.core.errors import FieldViolation, InvalidArgument
from board_server.core.limits import FILENAME_MAX
from board_server.domain.accounts import Accounts, Caller
from board_server.domain.attachments import AttachmentService, AttachmentView
from board_server.domain.validation import Violations


def _invalid(name: str, description: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation(name, description)])


@dataclass
class Upload:
    """One upload in progress: the bytes so far, held to the declared size and to the limit."""

    attachments: AttachmentService
    caller: Caller
    post_id: int
    filename: str
    content_type: str
    declared: int  # the metadata's size_bytes; 0: unknown
    max_bytes: int
    request_id: str = ""
    data: bytearray = field(default_factory=bytearray)

    def add(self, chunk: bytes) -> None:
        """Append ``chunk``; raise InvalidArgument once the image outgrows the limit or its declared size."""
        size = len(self.data) + len(chunk)
        if size > self.max_bytes:
            raise _invalid("chunk", f"the image is larger than {self.max_bytes} bytes, the attachment limit")
        if self.declared and size > self.declared:
            raise _invalid("chunk", f"more bytes arrived than metadata.size_bytes said ({self.declared})")
        self.data += chunk

    async def finish(self, traceparent: str | None = None) -> AttachmentView:
        """Store the assembled image (``AttachmentService.add_attachment``, once per ``request_id``); raise
        InvalidArgument when fewer bytes arrived than declared, and whatever the add raises."""
        if self.declared and len(self.data) != self.declared:
            raise _invalid("metadata.size_bytes", f"said {self.declared} bytes, but {len(self.data)} arrived")
        return await self.attachments.add_attachment(
            self.caller,
            self.post_id,
            filename=self.filename,
            content_type=self.content_type,
            data=bytes(self.data),
            traceparent=traceparent,
            request_id=self.request_id,
        )


class Uploads:
    """Starts chunked uploads for AttachmentService; images are at most ``max_bytes``."""

    def __init__(self, attachments: AttachmentService, accounts: Accounts, *, max_bytes: int) -> None:
        self._attachments = attachments
        self._accounts = accounts
        self._max_bytes = max_bytes

    def require_uploader(self, caller: Caller) -> None:
        """Before any byte of an upload is read: raise Unauthenticated for an anonymous caller (auth on)."""
        if not caller.unrestricted:
            self._accounts.require_signed_in(caller, "uploading")

    async def begin(
        self,
        caller: Caller,
        post_id: int,
        *,
        filename: str,
        content_type: str,
        size_bytes: int,
        request_id: str = "",
    ) -> Upload:
        """Check the metadata and the post before any chunk; raise InvalidArgument (a field, or a declared
        size over the limit), Unauthenticated, PostNotFound, PermissionDenied, ResourceExhausted (the post
        is full), QuotaExceeded (the declared size would take the author past the storage quota)."""
        self.require_uploader(caller)
        violations = Violations()
        violations.row_id("metadata.post_id", post_id)
        violations.text("metadata.filename", filename, FILENAME_MAX)
        violations.request_id("metadata.request_id", request_id)
        if size_bytes < 0:
            violations.add("metadata.size_bytes", "must not be negative (0: unknown)")
        elif size_bytes > self._max_bytes:
            violations.add(
                "metadata.size_bytes", f"must be at most {self._max_bytes} bytes, the attachment limit"
            )
        violations.raise_if_any()
        await self._attachments.require_storage_for(caller, post_id, size_bytes)
        return Upload(
            self._attachments,
            caller,
            post_id,
            filename=filename,
            content_type=content_type,
            declared=size_bytes,
            max_bytes=self._max_bytes,
            request_id=request_id,
        )
