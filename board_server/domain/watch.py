"""WatchAttachment's engine: one poller per process for every watcher, woken at once by changes it hears of.

Watchers cost a dictionary entry and an asyncio queue each; one task reads the state of every watched
attachment in a single query every ``poll_s`` seconds, and at once when this process's tagging worker
reports a change (``poke``) or, on PostgreSQL, when a notification names a watched row (``changed``, from
the LISTEN connection of storage/notifications.py, for changes committed by any process of any replica); it
hands each watcher the versions that changed. Polling is what SQLite has between processes, and the safety
net for a notification that never arrived: a change reaches a watcher within ``poll_s`` (0.5 s by default,
flag ``--watch-poll``) at the latest. Nothing runs while nobody watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

V = TypeVar("V")


class WatchHub(Generic[V]):
    """Delivers changed versions of watched rows; ``read_many(ids)`` returns the current ones by id."""

    def __init__(
        self,
        read_many: Callable[[Sequence[int]], Awaitable[Mapping[int, V]]],
        version: Callable[[V], Hashable],
        *,
        poll_s: float,
    ) -> None:
        self._read_many = read_many
        self._version = version
        self._poll_s = poll_s
        self._watchers: dict[int, dict[int, tuple[asyncio.Queue[V | None], Hashable]]] = {}
        self._next_key = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def watcher_count(self) -> int:
        return sum(len(w) for w in self._watchers.values())

    def poke(self) -> None:
        """Something changed in this process (thread-safe): look now instead of at the next poll."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    def changed(self, row_ids: Collection[int] | None) -> None:
        """Those rows changed somewhere (None: any may have), from the event loop: look now if any of them
        is watched."""
        if self._watchers and (row_ids is None or not self._watchers.keys().isdisjoint(row_ids)):
            self._wake.set()

    async def changes(self, row_id: int, current: V) -> AsyncIterator[V]:
        """Every later version of row ``row_id`` (after ``current``); None from the queue means it is gone."""
        queue: asyncio.Queue[V | None] = asyncio.Queue()
        key = self._next_key
        self._next_key += 1
        self._watchers.setdefault(row_id, {})[key] = (queue, self._version(current))
        self._ensure_poller()
        self._wake.set()  # one look at once: a change may have landed between ``current`` and now
        try:
            while (item := await queue.get()) is not None:
                yield item
        finally:
            watchers = self._watchers.get(row_id, {})
            watchers.pop(key, None)
            if not watchers:
                self._watchers.pop(row_id, None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _ensure_poller(self) -> None:
        if self._task is None or self._task.done():
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.create_task(self._poll(), name="watch-poller")

    async def _poll(self) -> None:
        while self._watchers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):
                    await self._wake.wait()
            self._wake.clear()
            ids = list(self._watchers)
            try:
                current = await self._read_many(ids)
            except Exception:  # the database is away: keep watching, the health check reports it
                logger.warning("watch poll failed; retrying in %.1fs", self._poll_s, exc_info=True)
                continue
            for row_id in ids:
                watchers = self._watchers.get(row_id, {})
                row = current.get(row_id)
                for key, (queue, seen) in list(watchers.items()):
                    if row is None:
                        queue.put_nowait(None)
                    elif (version := self._version(row)) != seen:
                        watchers[key] = (queue, version)
                        queue.put_nowait(row)
