"""Console script `board`: the bulletin board from the command line.

    board users create --name Ada --email ada@example.org
    board posts list --user 3
    board --json comments get 7

Human-readable tables by default, ``--json`` for machines. The server is ``--target`` (env BOARD_TARGET).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from clients.attachment_cli import COMMANDS as ATTACHMENT_COMMANDS
from clients.attachment_cli import (
    add_attachment_commands,
    print_attachments,
    run_attachment_command,
)
from clients.board import DEFAULT_TARGET, BoardClient, BoardClientError

RESOURCES = ("users", "posts", "comments")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="board", description="Talk to a board.v1.BoardService server.")
    parser.add_argument(
        "--target", default=None, help=f"HOST:PORT of the server (env BOARD_TARGET, default {DEFAULT_TARGET})"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call (default 10)")
    resources = parser.add_subparsers(dest="resource", required=True)

    users = resources.add_parser("users", help="users").add_subparsers(dest="action", required=True)
    create = users.add_parser("create", help="create a user")
    create.add_argument("--name", required=True)
    create.add_argument("--email", required=True)
    _add_get_delete_list(users, "user")
    update = users.add_parser("update", help="change a user's name and/or email")
    update.add_argument("id", type=int)
    update.add_argument("--name")
    update.add_argument("--email")

    posts = resources.add_parser("posts", help="posts").add_subparsers(dest="action", required=True)
    create = posts.add_parser("create", help="create a post")
    create.add_argument("--user", type=int, required=True, help="author's user id")
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
    update = posts.add_parser("update", help="change a post's title and/or content")
    update.add_argument("id", type=int)
    update.add_argument("--title")
    update.add_argument("--content")

    comments = resources.add_parser("comments", help="comments").add_subparsers(dest="action", required=True)
    create = comments.add_parser("create", help="comment on a post")
    create.add_argument("--post", type=int, required=True)
    create.add_argument("--user", type=int, required=True)
    create.add_argument("--content", required=True)
    listing = _add_get_delete_list(comments, "comment")
    listing.add_argument("--post", type=int, required=True, help="the post whose comments to list")
    update = comments.add_parser("update", help="change a comment's content")
    update.add_argument("id", type=int)
    update.add_argument("--content", required=True)
    add_attachment_commands(resources)
    return parser


def _add_get_delete_list(actions: Any, noun: str) -> argparse.ArgumentParser:
    actions.add_parser("get", help=f"show one {noun}").add_argument("id", type=int)
    actions.add_parser("delete", help=f"delete a {noun}").add_argument("id", type=int)
    listing: argparse.ArgumentParser = actions.add_parser("list", help=f"list {noun}s ordered by id")
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
                args.user, args.page_size, token, label=args.label, min_label_fraction=args.min_fraction
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


def run(client: BoardClient, args: argparse.Namespace) -> dict[str, Any] | list[dict[str, Any]] | None:
    """Perform the action named by ``args``; return what to print (None for deletes)."""
    resource, action = args.resource, args.action
    if action == "list":
        rows, token = _rows_and_token(client, args)
        return {resource: [_to_dict(r) for r in rows], "next_page_token": token}
    if action == "delete":
        {"users": client.delete_user, "posts": client.delete_post, "comments": client.delete_comment}[
            resource
        ](args.id)
        return None
    result: Message
    if action == "get":
        result = {"users": client.get_user, "posts": client.get_post, "comments": client.get_comment}[
            resource
        ](args.id)
    elif resource == "users":
        if action == "create":
            result = client.create_user(args.name, args.email)
        else:
            result = client.update_user(args.id, name=args.name, email=args.email)
    elif resource == "posts":
        if action == "create":
            result = client.create_post(args.user, args.title, args.content)
        else:
            result = client.update_post(args.id, title=args.title, content=args.content)
    elif action == "create":
        result = client.create_comment(args.post, args.user, args.content)
    else:
        result = client.update_comment(args.id, content=args.content)
    return _to_dict(result)


def _print_human(args: argparse.Namespace, result: dict[str, Any] | list[dict[str, Any]] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if result is None:
        console.print(f"deleted {args.resource[:-1]} {args.id}")
        return
    rows = result[args.resource] if isinstance(result, dict) and args.action == "list" else [result]
    columns = {
        "users": ["id", "name", "email", "create_time"],
        "posts": ["id", "user_id", "title", "content", "create_time", "update_time"],
        "comments": ["id", "post_id", "user_id", "content", "create_time", "update_time"],
    }[args.resource]
    table = Table(*columns)
    for row in rows:
        assert isinstance(row, dict)
        table.add_row(*(str(row.get(c, "")) for c in columns))
    console.print(table)
    if isinstance(result, dict) and result.get("next_page_token"):
        console.print(f"next page: --page-token {result['next_page_token']}")


def board_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `board`; exit status 0 on success, 1 on a failed call, 2 on bad usage."""
    args = get_args_parser().parse_args(argv)
    target = args.target or os.environ.get("BOARD_TARGET") or DEFAULT_TARGET
    try:
        with BoardClient(target, timeout=args.timeout) as client:
            if args.resource in ATTACHMENT_COMMANDS:
                result = run_attachment_command(client, args)
            else:
                result = run(client, args)
    except BoardClientError as exc:
        if args.json:
            error = {
                "code": exc.code.name,
                "message": exc.message,
                "field_violations": [
                    {"field": v.field, "description": v.description} for v in exc.violations
                ],
            }
            print(json.dumps({"error": error}), file=sys.stderr)
        else:
            print(f"error: {exc.code.name}: {exc.message}", file=sys.stderr)
            for violation in exc.violations:
                print(f"  {violation.field}: {violation.description}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result if result is not None else {}, indent=2))
    elif args.resource in ATTACHMENT_COMMANDS:
        print_attachments(result, args)
    else:
        _print_human(args, result)
    return 0


if __name__ == "__main__":
    sys.exit(board_main())
