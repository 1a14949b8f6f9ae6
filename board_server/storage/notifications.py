"""Attachment changes told to every replica on PostgreSQL: NOTIFY in the changing transaction, LISTEN on a
connection of its own in each process.

A change a watcher can see (a tagging outcome, a claim, a retry, a re-tag, a deletion) calls
``notify_attachments_changed`` inside its transaction; PostgreSQL delivers the notification to every
listener when, and only if, that transaction commits. ``AttachmentChangeListener`` keeps one connection per
process LISTENing and hands each notification's ids to a callback (the watch hub), and reconnects after a
lost connection. A missed notification costs latency, not correctness: the watch hub still polls. SQLite has
no notifications (its processes share one machine and poll).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Connection, Engine, func, select

logger = logging.getLogger(__name__)

CHANNEL = "board_attachments"
EVERYTHING = "*"  # the payload of a change to rows not named one by one (a re-tag of many)
APPLICATION_NAME = "board-listener"  # then the process id: which backend listens for which process
_MAX_PAYLOAD = 7000  # PostgreSQL refuses payloads of 8,000 bytes or more
_RECONNECT_MAX_S = 5.0


def notify_attachments_changed(conn: Connection, attachment_ids: Iterable[int] | None) -> None:
    """Tell every replica's listeners, when the caller's transaction commits, that these attachments
    changed (None: any of them may have). Nothing on SQLite."""
    if conn.dialect.name != "postgresql":
        return
    payload = EVERYTHING if attachment_ids is None else ",".join(str(int(i)) for i in attachment_ids)
    if not payload:
        return
    if len(payload) > _MAX_PAYLOAD:
        payload = EVERYTHING
    conn.execute(select(func.pg_notify(CHANNEL, payload)))


def changed_ids(payload: str) -> frozenset[int] | None:
    """The attachment ids a notification names; None when it says any may have changed."""
    if payload == EVERYTHING:
        return None
    try:
        return frozenset(int(part) for part in payload.split(",") if part)
    except ValueError:
        return None


class AttachmentChangeListener:
    """LISTENs on its own connection (outside every pool) and calls ``on_change(ids)`` for each
    notification, ``on_change(None)`` after (re)connecting: whatever happened meanwhile went unheard."""

    def __init__(self, engine: Engine, on_change: Callable[[frozenset[int] | None], None]) -> None:
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        self._connect_args: tuple[list[Any], dict[str, Any]] = (
            list(cargs),
            {**cparams, "application_name": f"{APPLICATION_NAME}-{os.getpid()}", "autocommit": True},
        )
        self._on_change = on_change
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting (backing off up to a few seconds) whenever the connection
        is lost."""
        import psycopg  # here: a board on SQLite never loads it

        failures = 0
        while True:
            cargs, cparams = self._connect_args
            try:
                connection = await psycopg.AsyncConnection.connect(*cargs, **cparams)
                async with connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    if failures:
                        logger.info("listening for attachment changes again")
                    failures = 0
                    self.connected.set()
                    self._on_change(None)
                    async for note in connection.notifies():
                        self._on_change(changed_ids(note.payload))
            except (psycopg.Error, OSError) as exc:
                self.connected.clear()
                failures += 1
                delay = min(_RECONNECT_MAX_S, 0.1 * 2**failures)
                log = logger.warning if failures == 1 else logger.debug
                log(
                    "the attachment-change listener lost its connection (%s); reconnecting in %.1fs",
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
