"""Console script `board`: the bulletin board from the command line.

    board login --email ada@example.org          # password from a prompt (or stdin); token kept 0600
    board posts create --title Hello --content "First post"
    board posts list --filter 'label.dog >= 0.2' --order-by 'create_time desc' --with-attachments
    board posts update 7 --title "New" --if-match 18c2f3a4b5d6e   # only if nobody changed it since
    board --json comments get 7

Creates carry a request_id (``--request-id``, or a fresh UUID4), so the client's retry policy
(clients/board.py) retries them safely; ``--if-match ETAG`` makes an update or delete conditional.
Human-readable tables by default, ``--json`` for machines. The server is ``--target`` (env BOARD_TARGET),
reached over TLS unless it is loopback (``--ca-file`` / BOARD_CA_FILE for a private CA, ``--tls`` for TLS on
loopback too, ``--plaintext`` / BOARD_PLAINTEXT to opt out, as grpcurl's ``-plaintext``). The access token
comes from BOARD_TOKEN or from `board login`'s file (clients/credentials.py). Server text is shown literally.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.table import Table
from rich.text import Text

from clients.account_cli import COMMANDS as ACCOUNT_COMMANDS
from clients.account_cli import (
    UsageError,
    add_account_commands,
    add_password_stdin,
    read_password,
    refused_password_flag,
    run_account_command,
)
from clients.attachment_cli import COMMANDS as ATTACHMENT_COMMANDS
from clients.attachment_cli import (
    add_attachment_commands,
    labels_text,
    model_text,
    run_attachment_command,
    status_text,
)
from clients.board import DEFAULT_TARGET, BoardClient, BoardClientError
from clients.console_text import Output, join, literal, visible
from clients.credentials import TOKEN_ENV, Credential, CredentialsError, find_credential
from clients.gen.board.v1 import board_pb2

RESOURCES = ("users", "posts", "comments")
COLUMNS = {
    "users": ["id", "name", "email", "admin", "create_time", "etag"],
    "posts": ["id", "user_id", "title", "content", "create_time", "update_time", "etag"],
    "comments": ["id", "post_id", "user_id", "content", "create_time", "update_time", "etag"],
}
REQUEST_ID_HELP = "a UUID4 naming this create (default: a fresh one): run again with it to retry safely"
IF_MATCH_HELP = "only if the etag is still this one (ABORTED when it changed since it was read)"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="board", description="Talk to a board.v1.BoardService server.", allow_abbrev=False
    )
    parser.add_argument(
        "--target", default=None, help=f"HOST:PORT of the server (env BOARD_TARGET, default {DEFAULT_TARGET})"
    )
    parser.add_argument(
        "--tls", action="store_true", default=None, help="TLS even to a loopback target (env BOARD_TLS)"
    )
    parser.add_argument(
        "--ca-file", type=Path, help="TLS with these PEM root certificates (env BOARD_CA_FILE)"
    )
    parser.add_argument(
        "--plaintext",
        action="store_true",
        default=None,
        help="no TLS, even to a remote target (env BOARD_PLAINTEXT; default: TLS unless loopback)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call (default 10)")
    resources = parser.add_subparsers(dest="resource", required=True)
    add_account_commands(resources)

    users = resources.add_parser("users", help="users").add_subparsers(dest="action", required=True)
    create = users.add_parser(
        "create", help="sign up (password: prompt, or stdin when piped)", allow_abbrev=False
    )
    create.add_argument("--name", required=True)
    create.add_argument("--email", required=True)
    add_password_stdin(create)
    _add_get_delete_list(users, "user")
    update = users.add_parser(
        "update", help="change a user's name, email and/or password", allow_abbrev=False
    )
    update.add_argument("id", type=int)
    update.add_argument("--name")
    update.add_argument("--email")
    update.add_argument(
        "--change-password",
        action="store_true",
        help="ask for a new password (prompt, or stdin when piped); other sessions are signed out",
    )
    update.epilog = (
        "A new password or email of your own account takes your current password: asked first (the first "
        "line of stdin when piped, the new password on the second)."
    )
    add_password_stdin(update)

    posts = resources.add_parser("posts", help="posts").add_subparsers(dest="action", required=True)
    create = posts.add_parser("create", help="create a post")
    create.add_argument("--user", type=int, default=0, help="author's id (default 0: the signed-in user)")
    create.add_argument("--title", required=True)
    create.add_argument("--content", required=True)
    listing = _add_get_delete_list(posts, "post")
    listing.add_argument("--user", type=int, default=0, help="only this user's posts")
    listing.add_argument("--label", default="", help="only posts with a photo tagged so, e.g. dog")
    listing.add_argument(
        "--min-fraction",
        type=float,
        default=0.0,
        help="with --label: least share of the photo (default 0.01)",
    )
    listing.add_argument(
        "--filter", default="", help="AIP-160 filter, e.g. 'label.dog >= 0.2 AND NOT label.car'"
    )
    listing.add_argument("--order-by", default="", help="e.g. 'create_time desc', 'label.dog desc'")
    listing.add_argument(
        "--with-attachments", action="store_true", help="each post's attachments, labels and model"
    )
    update = posts.add_parser("update", help="change a post's title and/or content")
    update.add_argument("id", type=int)
    update.add_argument("--title")
    update.add_argument("--content")

    comments = resources.add_parser("comments", help="comments").add_subparsers(dest="action", required=True)
    create = comments.add_parser("create", help="comment on a post")
    create.add_argument("--post", type=int, required=True)
    create.add_argument("--user", type=int, default=0, help="author's id (default 0: the signed-in user)")
    create.add_argument("--content", required=True)
    listing = _add_get_delete_list(comments, "comment")
    listing.add_argument("--post", type=int, required=True, help="the post whose comments to list")
    update = comments.add_parser("update", help="change a comment's content")
    update.add_argument("id", type=int)
    update.add_argument("--content", required=True)
    _add_safe_write_flags(users, posts, comments)
    add_attachment_commands(resources)
    return parser


def _add_safe_write_flags(*resources: Any) -> None:
    """``--request-id`` on every create, ``--if-match`` on every update and delete of ``resources``."""
    for actions in resources:
        for action, parser in actions.choices.items():
            if action == "create":
                parser.add_argument("--request-id", help=REQUEST_ID_HELP)
            elif action in ("update", "delete"):
                parser.add_argument("--if-match", default="", metavar="ETAG", help=IF_MATCH_HELP)


def _add_get_delete_list(actions: Any, noun: str) -> argparse.ArgumentParser:
    actions.add_parser("get", help=f"show one {noun}").add_argument("id", type=int)
    actions.add_parser("delete", help=f"delete a {noun}").add_argument("id", type=int)
    listing: argparse.ArgumentParser = actions.add_parser("list", help=f"list {noun}s")
    listing.add_argument("--page-size", type=int, default=0, help="rows per page (0: server default 50)")
    listing.add_argument("--page-token", default="", help="next_page_token of the previous page")
    listing.add_argument("--all", action="store_true", help="follow next_page_token to the end")
    return listing


def _to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _rows_and_token(client: BoardClient, args: argparse.Namespace) -> tuple[list[Message], str]:
    """Run a list action: one page, or every page with --all."""
    fetch: Callable[[str], tuple[Sequence[Message], str]]
    if args.resource == "users":

        def fetch(token: str) -> tuple[Sequence[Message], str]:
            page = client.list_users(args.page_size, token)
            return page.users, page.next_page_token
    elif args.resource == "posts":

        def fetch(token: str) -> tuple[Sequence[Message], str]:
            page = client.list_posts(
                args.user,
                args.page_size,
                token,
                label=args.label,
                min_label_fraction=args.min_fraction,
                filter=args.filter,
                order_by=args.order_by,
                with_attachments=args.with_attachments,
            )
            return page.posts, page.next_page_token
    else:

        def fetch(token: str) -> tuple[Sequence[Message], str]:
            page = client.list_comments(args.post, args.page_size, token)
            return page.comments, page.next_page_token

    rows: list[Message] = []
    token = args.page_token
    while True:
        page_rows, token = fetch(token)
        rows.extend(page_rows)
        if not (args.all and token):
            return rows, token


def run(client: BoardClient, args: argparse.Namespace) -> tuple[list[Message], str] | Message | None:
    """Perform the users/posts/comments action named by ``args``: the rows and next page token of a list,
    the message of a get/create/update, None for a delete."""
    resource, action = args.resource, args.action
    if action == "list":
        return _rows_and_token(client, args)
    if action == "delete":
        {"users": client.delete_user, "posts": client.delete_post, "comments": client.delete_comment}[
            resource
        ](args.id, etag=args.if_match)
        return None
    if action == "get":
        getter: Callable[[int], Message] = {
            "users": client.get_user,
            "posts": client.get_post,
            "comments": client.get_comment,
        }[resource]
        return getter(args.id)
    return _write(client, args)


def _write(client: BoardClient, args: argparse.Namespace) -> Message:
    """Create or update a user, post or comment."""
    resource, create = args.resource, args.action == "create"
    if resource == "users":
        if create:
            password = read_password(from_stdin=args.password_stdin, confirm=True)
            return client.create_user(args.name, args.email, password, request_id=args.request_id)
        new_password, current = None, ""
        # Your own password or email: the server asks for the current password (an admin changing someone
        # else's does not need theirs).
        if (args.change_password or args.email) and client.get_user(0).id == args.id:
            current = read_password(from_stdin=args.password_stdin, prompt="Current password: ")
        if args.change_password:
            new_password = read_password(
                from_stdin=args.password_stdin, confirm=True, prompt="New password: "
            )
        return client.update_user(
            args.id,
            name=args.name,
            email=args.email,
            password=new_password,
            current_password=current,
            etag=args.if_match,
        )
    if resource == "posts":
        if create:
            return client.create_post(args.user, args.title, args.content, request_id=args.request_id)
        return client.update_post(args.id, title=args.title, content=args.content, etag=args.if_match)
    if create:
        return client.create_comment(args.post, args.user, args.content, request_id=args.request_id)
    return client.update_comment(args.id, content=args.content, etag=args.if_match)


def print_result(
    args: argparse.Namespace, result: tuple[list[Message], str] | Message | None, output: Output
) -> None:
    """The result of ``run``: JSON, or a table with every server string shown literally."""
    noun = args.resource[:-1]
    if result is None:
        if output.json:
            output.emit({})
        else:
            output.out.print(f"deleted {noun} {args.id}")
        return
    rows, token = result if isinstance(result, tuple) else ([result], "")
    if output.json:
        if isinstance(result, tuple):
            output.emit({args.resource: [_to_dict(r) for r in rows], "next_page_token": token})
        else:
            output.emit(_to_dict(result))
        return
    with_attachments = bool(getattr(args, "with_attachments", False))
    columns = COLUMNS[args.resource] + (["attachments"] if with_attachments else [])
    table = Table(*columns)
    for row in rows:
        values = _to_dict(row)
        cells = [_cell(values.get(column, "")) for column in COLUMNS[args.resource]]
        if with_attachments:
            assert isinstance(row, board_pb2.Post)
            cells.append(post_attachments_text(row))
        table.add_row(*cells)
    output.out.print(table)
    if token:
        output.out.print(join("next page: --page-token ", literal(token)))


def _cell(value: Any) -> Text:
    if isinstance(value, bool):
        return Text("yes" if value else "")
    return literal(value)


def post_attachments_text(post: board_pb2.Post) -> Text:
    """One line per attachment: ``#7 photo.jpg TAGGED: dog 31.0%, … (model)``, server text literal."""
    lines = []
    for attachment in post.attachments:
        line = join(f"#{attachment.id} ", literal(attachment.filename), " ", status_text(attachment))
        labels = labels_text(attachment)
        if labels:
            line.append_text(join(": ", labels))
        model = model_text(attachment.model)
        if model:
            line.append_text(join(" (", model, ")"))
        lines.append(line)
    return Text("\n").join(lines)


def _env_flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise UsageError(f"{name} must be on or off, got {value!r}")


def _connect(args: argparse.Namespace, env: Mapping[str, str], credential: Credential | None) -> BoardClient:
    target = _target(args, env)
    ca_file = args.ca_file or (Path(env["BOARD_CA_FILE"]) if env.get("BOARD_CA_FILE") else None)
    roots = None
    if ca_file is not None:
        try:
            roots = ca_file.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read the CA file {ca_file}: {exc.strerror}") from None
    plaintext = bool(args.plaintext) or _env_flag(env, "BOARD_PLAINTEXT")
    wants_tls = bool(args.tls) or _env_flag(env, "BOARD_TLS") or roots is not None
    if plaintext and wants_tls:
        raise UsageError("--plaintext (BOARD_PLAINTEXT) cannot go with --tls or --ca-file")
    tls = False if plaintext else (True if wants_tls else None)  # None: TLS unless the target is loopback
    return BoardClient(
        target,
        timeout=args.timeout,
        token=credential.token if credential is not None else None,
        root_certificates=roots,
        tls=tls,
    )


def _target(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    return str(args.target or env.get("BOARD_TARGET") or DEFAULT_TARGET)


def _hint(exc: BoardClientError, args: argparse.Namespace, credential: Credential | None) -> str:
    """What to do next, for the errors a person can act on."""
    if exc.code == grpc.StatusCode.ABORTED and args.resource in RESOURCES:
        return f"read it again (board {args.resource} get {args.id}) and decide with its new etag"
    if exc.code != grpc.StatusCode.UNAUTHENTICATED or args.resource == "login":
        return ""
    if credential is None:
        return "sign in first: board login"
    if credential.from_env:
        return f"sign in again: board login (and unset {TOKEN_ENV}, or set it to a new token)"
    return "sign in again: board login"


def _print_error(exc: BoardClientError, hint: str, output: Output) -> None:
    if output.json:
        error: dict[str, Any] = {
            "code": exc.code.name,
            "message": exc.message,
            "field_violations": [{"field": v.field, "description": v.description} for v in exc.violations],
        }
        if exc.retry_after is not None:
            error["retry_after_s"] = exc.retry_after
        if hint:
            error["hint"] = hint
        print(json.dumps({"error": error}), file=sys.stderr)
        return
    print(f"error: {exc.code.name}: {visible(exc.message)}", file=sys.stderr)
    for violation in exc.violations:
        print(f"  {visible(violation.field)}: {visible(violation.description)}", file=sys.stderr)
    if hint:
        print(hint, file=sys.stderr)


def board_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `board`; exit status 0 on success, 1 on a failed call, 2 on bad usage."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if refused_password_flag(arguments):
        print(
            "board: a password is never taken from a flag (shell history, ps): type it at the prompt, "
            "or pipe it to --password-stdin",
            file=sys.stderr,
        )
        return 2
    args = get_args_parser().parse_args(arguments)
    output = Output(json=args.json)
    env = os.environ
    credential: Credential | None = None
    try:
        # login starts a new session: an old token (perhaps expired) must not go with SignIn.
        if args.resource != "login":
            credential = find_credential(_target(args, env), env)
        with _connect(args, env, credential) as client:
            return _dispatch(client, args, output, credential)
    except UsageError as exc:
        print(f"board: {exc}", file=sys.stderr)
        return 2
    except (CredentialsError, OSError) as exc:
        print(f"board: {visible(str(exc))}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, EOFError):  # Ctrl-C anywhere, Ctrl-D at a prompt
        print("\nboard: interrupted", file=sys.stderr)
        return 130
    except BoardClientError as exc:
        _print_error(exc, _hint(exc, args, credential), output)
        return 1


def _dispatch(
    client: BoardClient, args: argparse.Namespace, output: Output, credential: Credential | None
) -> int:
    if args.resource in ACCOUNT_COMMANDS:
        return run_account_command(client, args, output, credential)
    if args.resource in ATTACHMENT_COMMANDS:
        return run_attachment_command(client, args, output)
    print_result(args, run(client, args), output)
    return 0


if __name__ == "__main__":
    sys.exit(board_main())
