"""Settings of the board server: one frozen dataclass, built from environment and flags in one function.

Nothing else in the package reads the environment.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_DATABASE_FILE = Path("var") / "board.db"
DEFAULT_AUDIT_LOG = Path("var") / "log" / "board-audit.log"


@dataclass(frozen=True)
class Settings:
    """Everything the server needs to start; see ``load_settings`` for where each value comes from."""

    address: str = DEFAULT_ADDRESS
    database_url: str = ""
    audit_log_path: Path = DEFAULT_AUDIT_LOG
    audit_log_max_bytes: int = 10 * 1024 * 1024
    audit_log_backups: int = 5
    log_level: str = "INFO"
    worker_threads: int = 16
    max_message_bytes: int = 4 * 1024 * 1024
    grace_seconds: float = 10.0
    sqlite_busy_timeout_ms: int = 30_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the server flags to ``parser``; every flag defaults to None so env and defaults can fill in."""
    parser.add_argument(
        "--address", help=f"HOST:PORT to listen on (env BOARD_ADDRESS, default {DEFAULT_ADDRESS})"
    )
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db "
        f"(env BOARD_DATABASE_URL, default sqlite file {DEFAULT_DATABASE_FILE})",
    )
    parser.add_argument(
        "--audit-log", help=f"audit log file, rotating (env BOARD_AUDIT_LOG, default {DEFAULT_AUDIT_LOG})"
    )
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ... (env BOARD_LOG_LEVEL, default INFO)")
    parser.add_argument("--workers", type=int, help="gRPC worker threads (env BOARD_WORKERS, default 16)")
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        help="largest request/response in bytes (env BOARD_MAX_MESSAGE_BYTES, default 4 MiB)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        help="seconds in-flight calls get to finish on shutdown (env BOARD_GRACE_SECONDS, default 10)",
    )


def load_settings(
    args: argparse.Namespace | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Build Settings: a flag wins over its environment variable, which wins over the default.

    Relative default paths are resolved against ``cwd`` (the working directory). Raises ValueError on a
    malformed value (a non-numeric BOARD_WORKERS, an address without a port, ...).
    """
    env = os.environ if env is None else env
    base = Path.cwd() if cwd is None else cwd
    given = vars(args) if args is not None else {}

    def pick(flag: str, var: str) -> str | None:
        value = given.get(flag)
        if value is not None:
            return str(value)
        return env.get(var) or None

    address = pick("address", "BOARD_ADDRESS") or DEFAULT_ADDRESS
    if ":" not in address:
        raise ValueError(f"address must be HOST:PORT, got {address!r}")
    database_url = pick("database_url", "BOARD_DATABASE_URL") or f"sqlite:///{base / DEFAULT_DATABASE_FILE}"
    audit = Path(pick("audit_log", "BOARD_AUDIT_LOG") or DEFAULT_AUDIT_LOG)
    log_level = (pick("log_level", "BOARD_LOG_LEVEL") or "INFO").upper()
    if not isinstance(logging.getLevelName(log_level), int):
        raise ValueError(f"unknown log level {log_level!r}")
    workers = int(pick("workers", "BOARD_WORKERS") or 16)
    max_bytes = int(pick("max_message_bytes", "BOARD_MAX_MESSAGE_BYTES") or 4 * 1024 * 1024)
    grace = float(pick("grace", "BOARD_GRACE_SECONDS") or 10.0)
    if workers < 1 or max_bytes < 1024 or grace < 0:
        raise ValueError("workers must be >= 1, max message bytes >= 1024, grace >= 0")
    return Settings(
        address=address,
        database_url=database_url,
        audit_log_path=audit if audit.is_absolute() else base / audit,
        log_level=log_level,
        worker_threads=workers,
        max_message_bytes=max_bytes,
        grace_seconds=grace,
    )
