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
# The least a tagging lease must exceed the segmentation call timeout by (the store after the call).
LEASE_MARGIN_S = 5.0


@dataclass(frozen=True)
class Settings:
    """Everything the server needs to start; see ``load_settings`` for where each value comes from."""

    address: str = DEFAULT_ADDRESS
    database_url: str = ""
    audit_log_path: Path = DEFAULT_AUDIT_LOG
    audit_log_max_bytes: int = 10 * 1024 * 1024
    audit_log_backups: int = 5
    log_level: str = "INFO"
    # 8, not 16: fewer threads contend less for the GIL (bench.board GetPost c16 0.46-0.48x floor at 16
    # threads, 0.50-0.62x at 8, on a quiet 2-core machine).
    worker_threads: int = 8
    max_message_bytes: int = 4 * 1024 * 1024
    grace_seconds: float = 10.0
    sqlite_busy_timeout_ms: int = 30_000
    # Attachments and their tagging (issue 6); an empty target turns tagging off (uploads stay PENDING).
    max_attachment_bytes: int = 20 * 1024 * 1024
    segmentation_target: str = ""
    segmentation_token_file: Path | None = None
    segmentation_model: str = "deeplabv3"
    segmentation_timeout_s: float = 60.0
    tagging_workers: int = 2
    tagging_poll_s: float = 2.0
    tagging_backoff_max_s: float = 30.0
    tagging_max_attempts: int = 5
    tagging_lease_s: float = 0.0  # 0: the call timeout plus 30 s

    @property
    def tagging_lease_seconds(self) -> float:
        """The lease a claimed attachment is held for: the flag, or the call timeout plus 30 s."""
        return self.tagging_lease_s or self.segmentation_timeout_s + 30

    @property
    def grpc_message_limit(self) -> int:
        """Largest gRPC message: the configured limit, raised to fit an attachment plus 1 MiB of headroom."""
        return max(self.max_message_bytes, self.max_attachment_bytes + 1024 * 1024)


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
    parser.add_argument("--workers", type=int, help="gRPC worker threads (env BOARD_WORKERS, default 8)")
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


def add_attachment_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of attachments and their tagging worker; each defaults to None so env and defaults fill in."""
    parser.add_argument(
        "--max-attachment-bytes",
        type=int,
        help="largest attachment in bytes (env BOARD_MAX_ATTACHMENT_BYTES, default 20 MiB)",
    )
    parser.add_argument(
        "--segmentation-target",
        help="HOST:PORT of TorchServe's gRPC inference API; empty turns tagging off "
        "(env BOARD_SEGMENTATION_TARGET)",
    )
    parser.add_argument(
        "--segmentation-token-file",
        help="TorchServe's key_file.json, re-read on every call (env BOARD_SEGMENTATION_TOKEN_FILE)",
    )
    parser.add_argument(
        "--segmentation-model",
        help="model name in TorchServe (env BOARD_SEGMENTATION_MODEL, default deeplabv3)",
    )
    parser.add_argument(
        "--segmentation-timeout",
        type=float,
        help="seconds per segmentation call (env BOARD_SEGMENTATION_TIMEOUT, default 60)",
    )
    parser.add_argument(
        "--tagging-workers", type=int, help="concurrent tagging calls (env BOARD_TAGGING_WORKERS, default 2)"
    )
    parser.add_argument(
        "--tagging-poll",
        type=float,
        help="seconds between scans for pending work from other replicas (env BOARD_TAGGING_POLL_SECONDS, "
        "default 2)",
    )
    parser.add_argument(
        "--tagging-lease",
        type=float,
        help="seconds a claimed attachment stays leased to one replica (env BOARD_TAGGING_LEASE_SECONDS, "
        "default the segmentation timeout + 30)",
    )
    parser.add_argument(
        "--tagging-max-attempts",
        type=int,
        help="attempts at a transient failure (TorchServe 5xx, timeout, dead worker) before FAILED "
        "(env BOARD_TAGGING_MAX_ATTEMPTS, default 5)",
    )
    parser.add_argument(
        "--tagging-backoff-max",
        type=float,
        help="longest wait between retries in seconds (env BOARD_TAGGING_BACKOFF_MAX_SECONDS, default 30)",
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
    workers = int(pick("workers", "BOARD_WORKERS") or Settings.worker_threads)
    max_bytes = int(pick("max_message_bytes", "BOARD_MAX_MESSAGE_BYTES") or 4 * 1024 * 1024)
    grace = float(pick("grace", "BOARD_GRACE_SECONDS") or 10.0)
    if workers < 1 or max_bytes < 1024 or grace < 0:
        raise ValueError("workers must be >= 1, max message bytes >= 1024, grace >= 0")
    max_attachment = int(pick("max_attachment_bytes", "BOARD_MAX_ATTACHMENT_BYTES") or 20 * 1024 * 1024)
    token_file = pick("segmentation_token_file", "BOARD_SEGMENTATION_TOKEN_FILE")
    seg_timeout = float(pick("segmentation_timeout", "BOARD_SEGMENTATION_TIMEOUT") or 60.0)
    tagging_workers = int(pick("tagging_workers", "BOARD_TAGGING_WORKERS") or 2)
    poll = float(pick("tagging_poll", "BOARD_TAGGING_POLL_SECONDS") or 2.0)
    backoff_max = float(pick("tagging_backoff_max", "BOARD_TAGGING_BACKOFF_MAX_SECONDS") or 30.0)
    max_attempts = int(pick("tagging_max_attempts", "BOARD_TAGGING_MAX_ATTEMPTS") or 5)
    lease = float(pick("tagging_lease", "BOARD_TAGGING_LEASE_SECONDS") or 0.0)
    if max_attachment < 1 or seg_timeout <= 0 or tagging_workers < 1 or poll <= 0 or backoff_max <= 0:
        raise ValueError(
            "max attachment bytes >= 1, segmentation timeout > 0, tagging workers >= 1, poll > 0, "
            "backoff max > 0"
        )
    if max_attempts < 1:
        raise ValueError("tagging max attempts must be >= 1")
    # A lease shorter than a call would let a second replica take work that is still in flight.
    if lease and lease < seg_timeout + LEASE_MARGIN_S:
        raise ValueError(
            f"tagging lease ({lease:g}s) must exceed the segmentation timeout ({seg_timeout:g}s) by at "
            f"least {LEASE_MARGIN_S:g}s, so that a call in flight never outlives its lease"
        )
    return Settings(
        address=address,
        database_url=database_url,
        audit_log_path=audit if audit.is_absolute() else base / audit,
        log_level=log_level,
        worker_threads=workers,
        max_message_bytes=max_bytes,
        grace_seconds=grace,
        max_attachment_bytes=max_attachment,
        segmentation_target=pick("segmentation_target", "BOARD_SEGMENTATION_TARGET") or "",
        segmentation_token_file=Path(token_file) if token_file else None,
        segmentation_model=pick("segmentation_model", "BOARD_SEGMENTATION_MODEL") or "deeplabv3",
        segmentation_timeout_s=seg_timeout,
        tagging_workers=tagging_workers,
        tagging_poll_s=poll,
        tagging_backoff_max_s=backoff_max,
        tagging_max_attempts=max_attempts,
        tagging_lease_s=lease,
    )
