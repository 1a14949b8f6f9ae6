"""Changes told to every replica on PostgreSQL: NOTIFY in the changing transaction, LISTEN on a connection of
its own in each process.

Two channels: attachments (a tagging outcome, a claim, a retry, a re-tag, a deletion: the watch hub wakes its
watchers) and sessions (a token revoked, a user's admin flag changed, a user deleted: each process forgets
what it remembered of those users' tokens). A change calls ``notify_*_changed`` inside its transaction;
PostgreSQL delivers the notification to every listener when, and only if, that transaction commits.
``ChangeListener`` keeps one connection per process LISTENing, hands each notification's ids to the
channel's callback, and reconnects after a lost connection; each callback hears ``None`` (anything may have
changed) after every (re)connection, and ``connected`` is clear while nothing is heard. SQLite has no
notifications (its processes share one machine; watchers poll, tokens are looked up at every call).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, Engine, func, select

logger = logging.getLogger(__name__)

ATTACHMENTS = "board_attachments"  # payload: attachment ids
SESSIONS = "board_sessions"  # payload: user ids whose tokens were revoked or whose admin flag changed
EVERYTHING = "*"  # the payload of a change to rows not named one by one (a re-tag of many)
APPLICATION_NAME = "board-listener"  # then the process id: which backend listens for which process
_MAX_PAYLOAD = 7000  # PostgreSQL refuses payloads of 8,000 bytes or more
_RECONNECT_MAX_S = 5.0


def notify_attachments_changed(conn: Connection, attachment_ids: Iterable[int] | None) -> None:
    """Tell every replica's listeners, when the caller's transaction commits, that these attachments
    changed (None: any of them may have). Nothing on SQLite."""
    _notify(conn, ATTACHMENTS, attachment_ids)


def notify_sessions_changed(conn: Connection, user_ids: Iterable[int] | None) -> None:
    """Tell every replica's listeners, when the caller's transaction commits, that tokens of these users
    were revoked or their admin flag changed (None: any user's may have). Nothing on SQLite."""
    _notify(conn, SESSIONS, user_ids)


def _notify(conn: Connection, channel: str, ids: Iterable[int] | None) -> None:
    if conn.dialect.name != "postgresql":
        return
    payload = EVERYTHING if ids is None else ",".join(str(int(i)) for i in ids)
    if not payload:
        return
    if len(payload) > _MAX_PAYLOAD:
        payload = EVERYTHING
    conn.execute(select(func.pg_notify(channel, payload)))


def changed_ids(payload: str) -> frozenset[int] | None:
    """The attachment ids a notification names; None when it says any may have changed."""
    if payload == EVERYTHING:
        return None
    try:
        return frozenset(int(part) for part in payload.split(",") if part)
    except ValueError:
        return None


Changed = Callable[[frozenset[int] | None], None]


class ChangeListener:
    """LISTENs on its own connection (outside every pool) and calls ``callbacks[channel](ids)`` for each
    notification, and every callback with None after (re)connecting: whatever happened meanwhile went
    unheard. ``connected`` is set while listening."""

    def __init__(
        self, engine: Engine, callbacks: Mapping[str, Changed], connected: asyncio.Event | None = None
    ) -> None:
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        self._connect_args: tuple[list[Any], dict[str, Any]] = (
            list(cargs),
            {**cparams, "application_name": f"{APPLICATION_NAME}-{os.getpid()}", "autocommit": True},
        )
        self._callbacks = dict(callbacks)
        self.connected = connected or asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting (backing off up to a few seconds) whenever the connection
        is lost."""
        import psycopg  # here: a board on SQLite never loads it

        failures = 0
        while True:
            cargs, cparams = self._connect_args
            try:
                connection = await psycopg.AsyncConnection.connect(*cargs, **cparams)
                try:
                    for channel in self._callbacks:
                        await connection.execute(f"LISTEN {channel}")
                    if failures:
                        logger.info("listening for changes again")
                    failures = 0
                    self.connected.set()
                    for callback in self._callbacks.values():
                        callback(None)
                    async for note in connection.notifies():
                        if (told := self._callbacks.get(note.channel)) is not None:
                            told(changed_ids(note.payload))
                finally:
                    self.connected.clear()  # before anything else runs: nothing is heard from here on
                    await connection.close()
            except (psycopg.Error, OSError) as exc:
                failures += 1
                delay = min(_RECONNECT_MAX_S, 0.1 * 2**failures)
                log = logger.warning if failures == 1 else logger.debug
                log("the change listener lost its connection (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)
