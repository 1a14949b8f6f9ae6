"""`board-server`: serve board.v1.BoardService (default), or work on its database and exit.

board-server [flags]                          serve (see --help for every flag and its env variable)
board-server migrate                          bring the schema to the newest revision
board-server admin grant EMAIL                make the user an admin (admin revoke EMAIL: take it back)
board-server admin set-password EMAIL         read a new password from stdin; ends the user's sessions
board-server retag [--post-id N]              re-tag what another model than the served one labelled
                                              (asks TorchServe: needs --segmentation-target)
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from collections.abc import Sequence

from board_server.runtime.config import Settings, add_arguments, load_settings

logger = logging.getLogger("board_server")

ADMIN_ACTIONS = ("grant", "revoke", "set-password")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="board-server", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", nargs="?", choices=("serve", "migrate", "admin", "retag"), default="serve")
    parser.add_argument("arguments", nargs="*", help="admin: ACTION EMAIL (grant, revoke, set-password)")
    parser.add_argument(
        "--stale", action="store_true", help="retag: the stale ones (the default and only kind)"
    )
    parser.add_argument("--post-id", type=int, default=None, help="retag: only this post's attachments")
    add_arguments(parser)
    return parser


def _read_password(email: str) -> str:
    """The new password: asked twice without echo on a terminal, else the first line of stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass(f"New password for {email}: ")
        if getpass.getpass("Again: ") != first:
            raise ValueError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def admin(settings: Settings, action: str, email: str) -> int:
    """Run an admin action on the database; the exit status."""
    from board_server.domain.admin import grant_admin, set_password
    from board_server.runtime.database import database_for
    from board_server.runtime.logs import audit_append_handler, route_audit
    from board_server.storage.engine import migrate

    route_audit(audit_append_handler(settings))
    database = database_for(settings)
    try:
        migrate(database.engine)
        if action == "set-password":
            user_id = set_password(database, email, _read_password(email))
        else:
            user_id = grant_admin(database, email, admin=action == "grant")
    except ValueError as exc:
        logger.error("%s", exc)
        return 1
    finally:
        database.dispose()
    logger.info("%s done for user %d", action, user_id)
    return 0


def retag(settings: Settings, post_id: int | None) -> int:
    """Queue re-tags of the attachments labelled by another model than the served one; the exit status."""
    from board_server.core.errors import BoardError
    from board_server.domain.accounts import OPERATOR
    from board_server.runtime.assemble import build_board
    from board_server.runtime.logs import audit_append_handler, route_audit

    if not settings.segmentation_target:
        logger.error("retag needs --segmentation-target (env BOARD_SEGMENTATION_TARGET) to ask TorchServe")
        return 2
    route_audit(audit_append_handler(settings))
    migrate_database(settings)
    parts = build_board(settings, tagging_threads=0)
    try:
        count, model = asyncio.run(
            parts.board.retagging.retag(OPERATOR, f"stale AND post_id = {post_id}" if post_id else "stale")
        )
    except BoardError as exc:
        logger.error("%s", exc.message)
        return 1
    finally:
        parts.close()
    logger.info(
        "queued %d attachment(s) for re-tagging with %s (archive sha256 %s)",
        count,
        model.identity.arch,
        model.identity.archive_sha256 or "unknown",
    )
    return 0


def migrate_database(settings: Settings) -> None:
    """Bring the database of ``settings`` to the newest schema (before any process serves it)."""
    from board_server.runtime.database import database_for
    from board_server.storage.engine import migrate

    database = database_for(settings)
    try:
        migrate(database.engine)
    finally:
        database.dispose()


def serve(settings: Settings) -> int:
    """Migrate, then serve with ``settings.processes`` processes; the exit status."""
    from board_server.runtime.serve import serve_single
    from board_server.runtime.supervisor import Supervisor

    migrate_database(settings)
    if settings.processes == 1:
        try:
            return serve_single(settings)
        except RuntimeError as exc:
            logger.error("cannot start: %s", exc)
            return 1
    return Supervisor(settings).run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args)
    except ValueError as exc:
        print(f"board-server: {exc}", file=sys.stderr)  # noqa: T201 - before logging is configured
        return 2
    from board_server.runtime.logs import configure_logging

    configure_logging(settings.log_level)
    from board_server.storage.errors import MigrationRefusedError

    try:
        return _run(parser, args, settings)
    except MigrationRefusedError as exc:  # the database holds what only its operator may decide about
        logger.error("cannot migrate the database: %s", exc)
        return 1


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, settings: Settings) -> int:
    """Run the command of ``args``; its exit status."""
    if args.command == "admin":
        if len(args.arguments) != 2 or args.arguments[0] not in ADMIN_ACTIONS:
            parser.error(f"admin needs ACTION EMAIL, ACTION one of {', '.join(ADMIN_ACTIONS)}")
        return admin(settings, args.arguments[0], args.arguments[1])
    if args.arguments:
        parser.error(f"unexpected arguments: {' '.join(args.arguments)}")
    if args.command == "retag":
        return retag(settings, args.post_id)
    if args.command == "migrate":
        migrate_database(settings)
        return 0
    if not settings.auth:
        logger.warning(
            "AUTH IS OFF (--auth off): anyone who reaches %s may act as any user; for local development only",
            settings.address,
        )
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
