"""Logging of the board: the ordinary log on stderr, and the audit log (every change, who made it) in a file
that every server process (and every admin command) appends whole lines to and one rotator alone rotates:
the supervisor's, or the single server process's.

Each writer appends with O_APPEND, a line one write(), so no line is torn; it looks for a rotation at most
every AUDIT_REOPEN_CHECK_S and then reopens the file, so lines written in between land whole at the end of
the file just renamed (a backup, kept as long as the others). The rotator rotates by size as
RotatingFileHandler would. A line costs its formatting and one write(): no stat() or seek() per line.
"""

from __future__ import annotations

import logging
import logging.handlers
import threading
import time
from pathlib import Path

from board_server.runtime.config import Settings

logger = logging.getLogger("board_server")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
AUDIT_FORMAT = "| %(asctime)s | %(levelname)s | %(message)s | %(filename)s | %(funcName)s |"
# How often a writer of the audit file looks for a rotation (one stat()).
AUDIT_REOPEN_CHECK_S = 0.5


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT, force=True)
    # No format of ours shows a thread, process or task: a record that does not look them up costs 3.2 µs
    # instead of 5.1 (every audit line is one; Python's logging HOWTO, "Optimization").
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Alembic announces every plugin at INFO; only its warnings matter here.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def _rotating_handler(settings: Settings) -> logging.handlers.RotatingFileHandler:
    """The rotator's hold on the audit file: only its doRollover is used (writers append for themselves)."""
    settings.audit_log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        settings.audit_log_path,
        maxBytes=settings.audit_log_max_bytes,
        backupCount=settings.audit_log_backups,
        encoding="utf-8",
    )
    handler.setFormatter(logging.Formatter(AUDIT_FORMAT))
    return handler


class _SecondsFormatter(logging.Formatter):
    """logging.Formatter whose timestamp (local time, milliseconds) formats each second's part once."""

    _second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second, stamp = self._second
        if second != int(record.created):
            second = int(record.created)
            stamp = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = (second, stamp)  # one assignment: threads that race each see a whole pair
        return f"{stamp},{int(record.msecs):03d}"  # what logging.Formatter writes


class AuditAppender(logging.handlers.WatchedFileHandler):
    """WatchedFileHandler (O_APPEND, each line flushed in one write(), the file reopened once the rotator
    has renamed it) that looks for the rename at most every ``reopen_check_s``, not with a stat() per line."""

    def __init__(self, path: Path, reopen_check_s: float = AUDIT_REOPEN_CHECK_S) -> None:
        super().__init__(path, encoding="utf-8", errors="backslashreplace")
        self._reopen_check_s = reopen_check_s
        self._next_check = 0.0

    def reopenIfNeeded(self) -> None:  # noqa: N802 (logging's name)
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._reopen_check_s
            super().reopenIfNeeded()


def audit_append_handler(settings: Settings, reopen_check_s: float = AUDIT_REOPEN_CHECK_S) -> logging.Handler:
    """The audit file as a server process or an admin command writes it: whole lines with O_APPEND, the file
    reopened after a rotation (the rotator's, never this writer's)."""
    settings.audit_log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = AuditAppender(settings.audit_log_path, reopen_check_s)
    handler.setFormatter(_SecondsFormatter(AUDIT_FORMAT))
    return handler


class AuditRotator:
    """The rotating side of the shared audit file (the supervisor's, or the single server process's): rotates
    it by size (as RotatingFileHandler would) while the writers append to it."""

    def __init__(self, settings: Settings, interval_s: float = 1.0) -> None:
        self._handler = _rotating_handler(settings)
        self._path = settings.audit_log_path
        self._max_bytes = settings.audit_log_max_bytes
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-rotator", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._handler.close()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                if self._max_bytes and self._path.stat().st_size >= self._max_bytes:
                    self._handler.doRollover()
            except OSError:
                logger.warning("could not rotate the audit log %s", self._path, exc_info=True)


def route_audit(handler: logging.Handler) -> None:
    audit = logging.getLogger("board.audit")
    audit.setLevel(logging.INFO)
    audit.propagate = False
    audit.handlers[:] = [handler]
