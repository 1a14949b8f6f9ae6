"""Logging of the board: the ordinary log on stderr, and the audit log (every change, who made it) in a file
that every server process appends whole lines to and the supervisor alone rotates.

Each process appends with O_APPEND and reopens the file after a rotation, so no line is lost or torn and a
line costs one write(); the supervisor rotates by size as RotatingFileHandler would.
"""

from __future__ import annotations

import logging
import logging.handlers
import threading

from board_server.runtime.config import Settings

logger = logging.getLogger("board_server")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
AUDIT_FORMAT = "| %(asctime)s | %(levelname)s | %(message)s | %(filename)s | %(funcName)s |"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT, force=True)
    # Alembic announces every plugin at INFO; only its warnings matter here.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def audit_file_handler(settings: Settings) -> logging.handlers.RotatingFileHandler:
    """The rotating audit file (the one writer of it)."""
    settings.audit_log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        settings.audit_log_path,
        maxBytes=settings.audit_log_max_bytes,
        backupCount=settings.audit_log_backups,
        encoding="utf-8",
    )
    handler.setFormatter(logging.Formatter(AUDIT_FORMAT))
    return handler


def audit_append_handler(settings: Settings) -> logging.Handler:
    """The audit file as a server process of several writes it: O_APPEND, reopened after a rotation."""
    settings.audit_log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.WatchedFileHandler(settings.audit_log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(AUDIT_FORMAT))
    return handler


class AuditRotator:
    """The supervisor's side of the shared audit file: rotates it by size (as RotatingFileHandler would) while
    the server processes append to it."""

    def __init__(self, settings: Settings, interval_s: float = 1.0) -> None:
        self._handler = audit_file_handler(settings)
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
