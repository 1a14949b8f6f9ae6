"""The preview cache of GetAttachmentPreview: which previews are kept, for how long, and how many are
rendered at a time (the pictures themselves are domain/previews.py's).

- Only the sizes of the ladder (``previews.LADDER``) are kept: a request is served from the smallest kept
  size at or above it (no larger than the image itself, which a preview never exceeds), scaled down on the
  fly when it asks for less. Each attachment then has at most a few kept previews per format and overlay,
  however many sizes clients ask for.
- The kept previews share one budget in bytes (``budget_bytes``), in the database (attachment_previews,
  shared by processes and replicas): storing one evicts the least recently used until all fit, in the same
  transaction. A preview's use is recorded at most once per ``TOUCH_EVERY``, so a preview read all day costs a
  write a minute, not one per read.
- Rendering (and scaling down) runs off the event loop on a few threads, at most ``renders_per_peer`` at a
  time for one client address and ``renders`` for the process: one client asking for many previews at once
  waits for its own turns and leaves the others theirs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial
from typing import Any

from sqlalchemy import Connection

from board_server.core.errors import FailedPrecondition
from board_server.domain.clock import now
from board_server.domain.previews import Preview, ladder_size, render_preview, scaled_down
from board_server.domain.served_models import ServedModels
from board_server.storage import attachments as attachment_rows
from board_server.storage.engine import Database

logger = logging.getLogger(__name__)

TOUCH_EVERY = timedelta(minutes=1)


class RenderSlots:
    """Turns to render: ``per_peer`` at a time for one client address, ``total`` for the process. A caller
    waits for its address's turn before it competes for the process's, so that one address never holds
    more than ``per_peer`` of them."""

    def __init__(self, *, total: int, per_peer: int) -> None:
        self._total = asyncio.Semaphore(total)
        self._per_peer = per_peer
        self._peers: dict[str, tuple[asyncio.Semaphore, int]] = {}  # address → (its turns, callers)

    @property
    def addresses(self) -> int:
        """Addresses with a render running or waiting (kept only while they have one)."""
        return len(self._peers)

    @asynccontextmanager
    async def turn(self, peer: str) -> AsyncIterator[None]:
        slots, callers = self._peers.get(peer) or (asyncio.Semaphore(self._per_peer), 0)
        self._peers[peer] = (slots, callers + 1)
        try:
            async with slots, self._total:
                yield
        finally:
            slots, callers = self._peers[peer]
            if callers == 1:
                del self._peers[peer]
            else:
                self._peers[peer] = (slots, callers - 1)


class PreviewCache:
    """Previews of attachments, kept on the ladder within the budget (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        models: ServedModels,
        *,
        budget_bytes: int,
        renders_per_peer: int,
        renders: int = 4,
        threads: int = 2,
    ) -> None:
        self._db = db
        self._models = models
        self.budget_bytes = budget_bytes
        # Rendering decodes whole photos: off the event loop (Pillow releases the GIL).
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="board-preview")
        self.slots = RenderSlots(total=renders, per_peer=renders_per_peer)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def preview(self, peer: str, attachment_id: int, size: int, overlay: bool, kind: str) -> Preview:
        """The preview of the attachment whose longer side is at most ``size`` (16..2048), in ``kind``, with
        the mask blended in with ``overlay``, for a caller at ``peer``; raise AttachmentNotFound,
        FailedPrecondition (an overlay before TAGGED)."""
        rung = ladder_size(size)

        def read(conn: Connection) -> tuple[int, Any]:
            source = attachment_rows.preview_source(conn, attachment_id)
            # Every size of the ladder above the image's own is the image itself: kept once.
            kept_as = min(rung, max(source.width, source.height))
            return kept_as, attachment_rows.read_preview(conn, attachment_id, kept_as, overlay, kind)

        kept_as, cached = await self._db.run_read(read)
        if cached is None:
            kept = await self._render(
                peer, attachment_id, rung=rung, kept_as=kept_as, overlay=overlay, kind=kind
            )
        else:
            kept = Preview(bytes(cached.data), kind, int(cached.width), int(cached.height))
            if cached.last_use_time < now() - TOUCH_EVERY:
                await self._db.run_write(
                    lambda conn: attachment_rows.touch_preview(
                        conn, attachment_id, kept_as, overlay, kind, now=now()
                    )
                )
        if max(kept.width, kept.height) <= size:
            return kept
        async with self.slots.turn(peer):
            scaled: Preview = await asyncio.get_running_loop().run_in_executor(
                self._pool, scaled_down, kept, size
            )
        return scaled

    async def _render(
        self, peer: str, attachment_id: int, *, rung: int, kept_as: int, overlay: bool, kind: str
    ) -> Preview:
        """Render the preview at ``rung`` from the photo and keep it (as ``kept_as``) within the budget."""

        def sources(conn: Connection) -> tuple[bytes, bytes | None, str]:
            data, _ = attachment_rows.read_content(conn, attachment_id)
            status, mask = attachment_rows.read_mask(conn, attachment_id)
            return data, mask, status

        data, mask, status = await self._db.run_read(sources)
        if overlay and mask is None:
            raise FailedPrecondition(
                f"attachment {attachment_id} is {status}; an overlay exists once it is TAGGED"
            )
        classes = await self._models.class_names()
        async with self.slots.turn(peer):
            preview: Preview = await asyncio.get_running_loop().run_in_executor(
                self._pool, partial(render_preview, data, mask if overlay else None, rung, kind, classes)
            )
        if self.budget_bytes:
            evicted = await self._db.run_write(
                lambda conn: attachment_rows.store_preview(
                    conn,
                    attachment_id,
                    size=kept_as,
                    overlay=overlay,
                    preview=preview,
                    now=now(),
                    budget=self.budget_bytes,
                )
            )
            if evicted:
                logger.debug("preview cache: %d least recently used previews evicted", evicted)
        return preview
