"""The account commands of the `board` console script (wired in clients/cli.py), and how passwords are read:

board login [--email ada@example.org]    # the password from a prompt without echo, or from stdin when piped
board whoami
board logout                              # revokes the token on the server (SignOut) and forgets it

A password is never taken from a flag (it would sit in the shell history and in every `ps` listing), never
printed and never logged; the access token is kept in a 0600 file (clients/credentials.py) and never printed.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

from google.protobuf import json_format
from rich.text import Text

from clients.board import BoardClient, UnauthenticatedError
from clients.console_text import Output, join, literal
from clients.credentials import (
    TOKEN_ENV,
    Credential,
    StoredSession,
    forget_session,
    save_session,
    stored_session,
)
from clients.gen.board.v1 import board_pb2

COMMANDS = ("login", "logout", "whoami")


class UsageError(Exception):
    """The command cannot run as given (exit status 2); the message says why."""


def add_account_commands(resources: Any) -> None:
    """Add `login`, `logout` and `whoami` to the `board` sub-command parser ``resources``."""
    login = resources.add_parser(
        "login", help="sign in and keep the token (password: prompt, or stdin when piped)", allow_abbrev=False
    )
    login.add_argument("--email", help="the account's email (asked for when not given)")
    add_password_stdin(login)
    resources.add_parser("logout", help="sign out: revoke the token on the server and forget it")
    resources.add_parser("whoami", help="who the stored token (or BOARD_TOKEN) signs you in as")


def add_password_stdin(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin (the default when stdin is not a terminal)",
    )


def refused_password_flag(argv: list[str]) -> bool:
    """True when ``argv`` tries to pass a password as a flag (refused without echoing the value)."""
    return any(arg == "--password" or arg.startswith("--password=") for arg in argv)


def read_password(*, from_stdin: bool = False, confirm: bool = False, prompt: str = "Password: ") -> str:
    """The password: the first line of stdin when it is not a terminal or when ``from_stdin`` (read without
    echo from a terminal), else a prompt without echo, twice with ``confirm``. Raises UsageError when the two
    typed passwords differ."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if from_stdin:
        return getpass.getpass("")
    password = getpass.getpass(prompt)
    if confirm and getpass.getpass("Repeat the password: ") != password:
        raise UsageError("the passwords do not match")
    return password


def _ask_email() -> str:
    if not sys.stdin.isatty():
        raise UsageError("give --email when the password comes from stdin")
    sys.stderr.write("Email: ")
    sys.stderr.flush()
    return sys.stdin.readline().strip()


def user_to_dict(user: board_pb2.User) -> dict[str, Any]:
    return json_format.MessageToDict(user, preserving_proto_field_name=True)


def _timestamp_text(value: Any) -> str:
    return str(value.ToJsonString()) if value.seconds or value.nanos else ""


def run_account_command(
    client: BoardClient, args: argparse.Namespace, output: Output, credential: Credential | None
) -> int:
    """Perform `login`, `logout` or `whoami` (``credential``: the token the command found); exit status."""
    if args.resource == "login":
        return _login(client, args, output)
    if args.resource == "logout":
        return _logout(client, output, credential)
    return _whoami(client, output, credential)


def _login(client: BoardClient, args: argparse.Namespace, output: Output) -> int:
    email = args.email or _ask_email()
    if not email:
        raise UsageError("an email is needed to sign in")
    password = read_password(from_stdin=args.password_stdin)
    response = client.sign_in(email, password)
    user = response.user
    session = StoredSession(
        target=client.target,
        token=response.access_token,
        user_id=int(user.id),
        email=user.email or email,
        expire_time=_timestamp_text(response.expire_time),
    )
    path = save_session(session)
    if output.json:
        output.emit(
            {
                "user": user_to_dict(user),
                "target": client.target,
                "expire_time": session.expire_time,
                "token_file": str(path),
            }
        )
    else:
        output.out.print(
            join(
                "signed in as ",
                _user_text(user, session.email),
                f" on {client.target} until {session.expire_time or 'the server says otherwise'}",
            )
        )
        output.out.print(join("token kept in ", literal(str(path)), " (mode 0600)"))
    if os.environ.get(TOKEN_ENV):
        output.err.print(
            f"note: {TOKEN_ENV} is set and wins over the stored token: unset it to use this sign-in"
        )
    return 0


def _logout(client: BoardClient, output: Output, credential: Credential | None) -> int:
    if credential is None:
        _say(output, {"signed_out": False, "target": client.target}, f"not signed in on {client.target}")
        return 0
    revoked = True
    try:
        client.sign_out()
    except UnauthenticatedError:
        revoked = False  # expired or revoked already: nothing left to revoke on the server
    forgotten = not credential.from_env and forget_session(client.target)
    words = "signed out" if revoked else "the token had already expired or been revoked"
    if forgotten:
        words += "; the stored token is forgotten"
    if credential.from_env:
        words += f"; {TOKEN_ENV} still holds the revoked token: unset it"
    _say(output, {"signed_out": True, "revoked": revoked, "target": client.target}, words)
    return 0


def _whoami(client: BoardClient, output: Output, credential: Credential | None) -> int:
    if credential is None:
        if output.json:
            output.emit({"signed_in": False, "target": client.target})
        else:
            output.err.print(f"not signed in on {client.target}: board login")
        return 1
    session = credential.session
    if session is None:  # BOARD_TOKEN: the stored session may still name its user
        stored = stored_session(client.target)
        session = stored if stored is not None and stored.token == credential.token else None
    if session is None:
        # The server has no "who am I" call: a read with the token proves it valid (a bad one is refused).
        client.list_users(page_size=1)
        _say(
            output,
            {"signed_in": True, "target": client.target, "token_source": credential.source, "user": None},
            f"signed in on {client.target} with a valid token from {credential.source} "
            "(the server does not say whose it is)",
        )
        return 0
    user = client.get_user(session.user_id)
    if output.json:
        output.emit(
            {
                "signed_in": True,
                "target": client.target,
                "token_source": credential.source,
                "expire_time": session.expire_time,
                "user": user_to_dict(user),
            }
        )
        return 0
    output.out.print(join(_user_text(user, session.email), f" on {client.target}"))
    output.out.print(
        join("token from ", literal(credential.source), f", expires {session.expire_time or 'unknown'}")
    )
    return 0


def _user_text(user: board_pb2.User, email: str) -> Text:
    details = f"user #{user.id}" + (", admin" if user.admin else "")
    return join(literal(user.name), " <", literal(user.email or email), f"> ({details})")


def _say(output: Output, value: dict[str, Any], words: str) -> None:
    if output.json:
        output.emit(value)
    else:
        output.out.print(words)
