"""`board-server`: serve board.v1.BoardService (default), or work on its database and exit.

board-server [flags]                          serve (see --help for every flag and its env variable)
board-server migrate                          bring the schema to the newest revision
board-server admin grant EMAIL                make the user an admin (admin revoke EMAIL: take it back)
board-server admin set-password EMAIL         read a new password from stdin; ends the user's sessions
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from collections.abc import Sequence

from board_server.config import Settings, add_arguments, load_settings

logger = logging.getLogger("board_server")

ADMIN_ACTIONS = ("grant", "revoke", "set-password")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="board-server", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", nargs="?", choices=("serve", "migrate", "admin"), default="serve")
    parser.add_argument("arguments", nargs="*", help="admin: ACTION EMAIL (grant, revoke, set-password)")
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
    from board_server.admin import grant_admin, set_password
    from board_server.database import migrate, open_database
    from board_server.processes import audit_file_handler, route_audit

    route_audit(audit_file_handler(settings))
    database = open_database(settings)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args)
    except ValueError as exc:
        print(f"board-server: {exc}", file=sys.stderr)  # noqa: T201 - before logging is configured
        return 2
    from board_server.processes import configure_logging, serve

    configure_logging(settings.log_level)
    if args.command == "admin":
        if len(args.arguments) != 2 or args.arguments[0] not in ADMIN_ACTIONS:
            parser.error(f"admin needs ACTION EMAIL, ACTION one of {', '.join(ADMIN_ACTIONS)}")
        return admin(settings, args.arguments[0], args.arguments[1])
    if args.arguments:
        parser.error(f"unexpected arguments: {' '.join(args.arguments)}")
    if args.command == "migrate":
        from board_server.database import migrate, open_database

        database = open_database(settings)
        try:
            migrate(database.engine)
        finally:
            database.dispose()
        return 0
    if not settings.auth:
        logger.warning(
            "AUTH IS OFF (--auth off): anyone who reaches %s may act as any user; for local development only",
            settings.address,
        )
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
