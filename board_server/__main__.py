"""`board-server`: serve board.v1.BoardService (default) or `board-server migrate` the database and exit."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from board_server.config import Settings, add_arguments, add_attachment_arguments, load_settings

logger = logging.getLogger("board_server")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="board-server", description=__doc__)
    parser.add_argument("command", nargs="?", choices=("serve", "migrate"), default="serve")
    add_arguments(parser)
    add_attachment_arguments(parser)
    return parser


def serve(settings: Settings) -> int:
    """Run the server until SIGTERM/SIGINT, then drain in-flight calls for the grace period."""
    from board_server.server import configure_audit_log, create_server

    audit_handler = configure_audit_log(settings)
    board = create_server(settings)
    host = settings.address.rsplit(":", 1)[0]
    # Tests and tools parse this line to learn the bound port (the address may say port 0).
    logger.info("listening on %s:%d", host, board.port)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info(
            "received %s; draining for up to %.1fs", signal.Signals(signum).name, settings.grace_seconds
        )
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stopping.wait()
    board.stop(settings.grace_seconds)
    audit_handler.close()
    logger.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        settings = load_settings(args)
    except ValueError as exc:
        print(f"board-server: {exc}", file=sys.stderr)  # noqa: T201 - before logging is configured
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # Alembic announces every plugin at INFO; only its warnings matter here.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level)))
    if args.command == "migrate":
        from board_server.database import migrate, open_database

        database = open_database(settings)
        try:
            migrate(database.engine)
        finally:
            database.dispose()
        return 0
    try:
        return serve(settings)
    except RuntimeError as exc:
        logger.error("cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
