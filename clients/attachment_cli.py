"""The attachment commands of the `board` console script (wired in clients/cli.py):

board attach POST_ID photo.jpg [more.png ...] [--wait]   # --wait streams each status change (WatchAttachment)
board attachments list --post 3 [--page-size N] [--all] | get 7 | delete 7 | watch 7 | retry 7 [--wait]
board attachments content 7 -o photo.jpg | mask 7 -o mask.png
board attachments preview 7 -o preview.jpg [--max-size 512] [--overlay] [--webp]
board attachments retag [--filter 'post_id = 3']   # admins: re-tag with the served model (default: stale)
board demo [--images DIR]       # signs up (or uses your sign-in), a post, a few photos, tags, search by label

Every piece of server text (filenames, labels, failure reasons, model names) is printed literally
(clients/console_text.py). Commands that wait exit 1 unless every attachment they waited for ends TAGGED.
"""

from __future__ import annotations

import argparse
import io
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from rich.table import Table
from rich.text import Text

from clients.board import BoardClient, DeadlineExceededError
from clients.console_text import Output, join, literal
from clients.gen.board.v1 import board_pb2

COMMANDS = ("attach", "attachments", "demo")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
TAGGED = board_pb2.ATTACHMENT_STATUS_TAGGED
PENDING = board_pb2.ATTACHMENT_STATUS_PENDING
NOT_TAGGING_HINT = "is the board server started with a segmentation target (make run does it)?"


def add_attachment_commands(resources: Any) -> None:
    """Add `attach`, `attachments` and `demo` to the `board` sub-command parser ``resources``."""
    attach = resources.add_parser("attach", help="attach image files to a post (tagged in the background)")
    attach.add_argument("post_id", type=int)
    attach.add_argument("files", nargs="+", type=Path, help="image files or folders of images")
    attach.add_argument("--content-type", default="", help="MIME type (default: sniffed by the server)")
    _add_wait(attach, "stream each attachment's status until it is TAGGED or FAILED")

    actions = resources.add_parser("attachments", help="attachments").add_subparsers(
        dest="action", required=True
    )
    listing = actions.add_parser("list", help="a post's attachments, a page at a time")
    listing.add_argument("--post", type=int, required=True)
    listing.add_argument("--page-size", type=int, default=0, help="rows per page (0: server default 50)")
    listing.add_argument("--page-token", default="", help="next_page_token of the previous page")
    listing.add_argument("--all", action="store_true", help="follow next_page_token to the end")
    actions.add_parser("get", help="one attachment with its labels").add_argument("id", type=int)
    actions.add_parser("delete", help="delete an attachment").add_argument("id", type=int)
    watch = actions.add_parser("watch", help="stream an attachment's status until TAGGED or FAILED")
    watch.add_argument("id", type=int)
    watch.add_argument("--timeout", dest="wait_timeout", type=float, default=300.0, help="seconds (300)")
    retry = actions.add_parser("retry", help="queue a FAILED attachment for tagging again")
    retry.add_argument("id", type=int)
    _add_wait(retry, "then stream its status until TAGGED or FAILED")
    for name, what in (("content", "the uploaded image"), ("mask", "the segmentation mask (PNG)")):
        command = actions.add_parser(name, help=f"save {what} to a file")
        command.add_argument("id", type=int)
        command.add_argument("-o", "--out", type=Path, required=True)
    preview = actions.add_parser("preview", help="save a small JPEG/WebP preview, optionally with the mask")
    preview.add_argument("id", type=int)
    preview.add_argument("-o", "--out", type=Path, required=True)
    preview.add_argument("--max-size", type=int, default=0, help="longest side in pixels (0: server's 512)")
    preview.add_argument("--overlay", action="store_true", help="blend the mask in, with a legend")
    preview.add_argument("--webp", action="store_true", help="WebP instead of JPEG")
    retag = actions.add_parser("retag", help="admins: queue attachments for tagging with the served model")
    retag.add_argument(
        "--filter",
        default="",
        help="e.g. 'status = \"FAILED\"', 'post_id = 3' (default: stale, another model)",
    )

    demo = resources.add_parser(
        "demo", help="the newcomer's tour: sign up, post photos, wait for tags, search by label"
    )
    demo.add_argument("--images", type=Path, help="folder of images (default: a few generated pictures)")
    demo.add_argument("--limit", type=int, default=4, help="at most this many images (default 4)")
    demo.add_argument("--wait-timeout", type=float, default=300.0)


def _add_wait(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--wait", action="store_true", help=what)
    parser.add_argument("--wait-timeout", type=float, default=300.0, help="seconds to wait (default 300)")


def attachment_to_dict(attachment: board_pb2.Attachment) -> dict[str, Any]:
    return json_format.MessageToDict(
        attachment, preserving_proto_field_name=True, always_print_fields_with_no_presence=False
    )


def run_attachment_command(client: BoardClient, args: argparse.Namespace, output: Output) -> int:
    """Perform an attachment command and print its result; return the exit status."""
    if args.resource == "attach":
        added = [
            client.upload_attachment(args.post_id, path.name, path.read_bytes(), args.content_type)
            for path in image_files(args.files)
        ]
        return _show_attachments(client, added, args, output)
    if args.resource == "demo":
        return run_demo(client, args, output)
    handlers: dict[str, Callable[[BoardClient, argparse.Namespace, Output], int]] = {
        "list": _list,
        "get": lambda c, a, o: _show_attachments(c, [c.get_attachment(a.id)], a, o),
        "retry": lambda c, a, o: _show_attachments(c, [c.retry_attachment(a.id)], a, o),
        "watch": _watch,
        "delete": _delete,
        "preview": _preview,
        "content": _save_bytes,
        "mask": _save_bytes,
        "retag": _retag,
    }
    return handlers[args.action](client, args, output)


def _delete(client: BoardClient, args: argparse.Namespace, output: Output) -> int:
    client.delete_attachment(args.id)
    if output.json:
        output.emit({})
    else:
        output.out.print(f"deleted attachment {args.id}")
    return 0


def _retag(client: BoardClient, args: argparse.Namespace, output: Output) -> int:
    response = client.retag_attachments(args.filter)
    if output.json:
        output.emit(json_format.MessageToDict(response, preserving_proto_field_name=True))
    else:
        output.out.print(
            join(
                f"queued {response.queued_count} attachment(s) for tagging with ", model_text(response.model)
            )
        )
    return 0


def _preview(client: BoardClient, args: argparse.Namespace, output: Output) -> int:
    preview = client.get_attachment_preview(
        args.id, max_size=args.max_size, overlay=args.overlay, content_type="image/webp" if args.webp else ""
    )
    args.out.write_bytes(preview.data)
    saved = {
        "id": args.id,
        "saved": str(args.out),
        "bytes": len(preview.data),
        "content_type": preview.content_type,
        "width": preview.width,
        "height": preview.height,
    }
    what = join(f"a {preview.width}x{preview.height} ", literal(preview.content_type), " preview")
    return _saved(saved, what, output)


def _save_bytes(client: BoardClient, args: argparse.Namespace, output: Output) -> int:
    content = args.action == "content"
    data = client.get_attachment_content(args.id).data if content else client.get_attachment_mask(args.id)
    args.out.write_bytes(data)
    saved = {"id": args.id, "saved": str(args.out), "bytes": len(data)}
    return _saved(saved, Text("the image" if content else "the mask"), output)


def _saved(saved: dict[str, Any], what: Text, output: Output) -> int:
    if output.json:
        output.emit(saved)
    else:
        output.out.print(
            join(
                "saved ",
                what,
                f" of attachment {saved['id']} ({saved['bytes']:,} bytes) to ",
                literal(saved["saved"]),
            )
        )
    return 0


def _list(client: BoardClient, args: argparse.Namespace, output: Output) -> int:
    rows: list[board_pb2.Attachment] = []
    token = args.page_token
    while True:
        page = client.list_attachments_page(args.post, args.page_size, token)
        rows.extend(page.attachments)
        token = page.next_page_token
        if not (args.all and token):
            break
    if output.json:
        output.emit({"attachments": [attachment_to_dict(a) for a in rows], "next_page_token": token})
        return 0
    output.out.print(attachment_table(rows))
    if token:
        output.out.print(join("next page: --page-token ", literal(token)))
    return 0


def _show_attachments(
    client: BoardClient, attachments: list[board_pb2.Attachment], args: argparse.Namespace, output: Output
) -> int:
    """Print ``attachments``; with ``--wait``, first stream each one's changes until it settles."""
    waiting = bool(getattr(args, "wait", False))
    if waiting:
        for attachment in attachments:
            output.progress.print(status_line(attachment))
        attachments = [
            follow(client, a.id, args.wait_timeout, _printer(output), last=a) or a for a in attachments
        ]
        _explain_unsettled(attachments, args.wait_timeout, output)
    if output.json:
        if args.resource == "attachments" and args.action in ("get", "retry"):
            output.emit(attachment_to_dict(attachments[0]))
        else:
            output.emit({"attachments": [attachment_to_dict(a) for a in attachments]})
    else:
        output.out.print(attachment_table(attachments))
    return 0 if not waiting or all(a.status == TAGGED for a in attachments) else 1


def _watch(client: BoardClient, args: argparse.Namespace, output: Output) -> int:
    """Stream the attachment's states (JSON Lines with --json) until it settles or the timeout passes."""
    seen: list[board_pb2.Attachment] = []

    def show(update: board_pb2.Attachment) -> None:
        seen.append(update)
        if output.json:
            output.emit(attachment_to_dict(update), compact=True)
        else:
            output.out.print(status_line(update))

    last = follow(client, args.id, args.wait_timeout, show)
    if last is None:
        output.err.print(f"no answer about attachment {args.id} within {args.wait_timeout:g} s")
        return 1
    _explain_unsettled([last], args.wait_timeout, output)
    return 0 if last.status == TAGGED else 1


def settled(attachment: board_pb2.Attachment) -> bool:
    """TAGGED or FAILED with no re-tag queued: WatchAttachment's stream ends here."""
    return attachment.status != PENDING and not attachment.retag_pending


def follow(
    client: BoardClient,
    attachment_id: int,
    timeout: float,
    show: Callable[[board_pb2.Attachment], None],
    *,
    last: board_pb2.Attachment | None = None,
) -> board_pb2.Attachment | None:
    """Watch an attachment (WatchAttachment: its state now, then each change) until it settles or ``timeout``
    seconds pass, calling ``show`` on every state that differs from the one before (``last`` to begin with);
    return the last state known (None when nothing arrived and ``last`` was None)."""
    stream = client.watch_attachment(attachment_id, timeout=timeout)
    try:
        for update in stream:
            if last is None or _differs(last, update):
                show(update)
            last = update
            if settled(update):
                break
    except DeadlineExceededError:
        pass
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # ends the call now rather than when the generator is collected
    return last


def _printer(output: Output) -> Callable[[board_pb2.Attachment], None]:
    return lambda update: output.progress.print(status_line(update))


def _differs(before: board_pb2.Attachment, after: board_pb2.Attachment) -> bool:
    return (before.status, before.attempts, before.retag_pending, before.failure_reason) != (
        after.status,
        after.attempts,
        after.retag_pending,
        after.failure_reason,
    )


def _explain_unsettled(attachments: Sequence[board_pb2.Attachment], timeout: float, output: Output) -> None:
    for attachment in attachments:
        if not settled(attachment):
            output.err.print(
                f"attachment {attachment.id} still PENDING after {timeout:g} s: {NOT_TAGGING_HINT}"
            )


def status_name(attachment: board_pb2.Attachment) -> str:
    return board_pb2.AttachmentStatus.Name(attachment.status).removeprefix("ATTACHMENT_STATUS_")


def status_line(attachment: board_pb2.Attachment) -> Text:
    """``#7 photo.jpg: TAGGED: dog 31.0%, person 5.2% (model …)``, every server string literal."""
    line = join(f"#{attachment.id} ", literal(attachment.filename), ": ", status_text(attachment))
    labels = labels_text(attachment)
    if labels:
        line.append(": ")
        line.append(labels)
    model = model_text(attachment.model) if attachment.HasField("model") else Text()
    if model:
        line.append(join(" (", model, ")"))
    return line


def status_text(attachment: board_pb2.Attachment) -> Text:
    text = Text(status_name(attachment))
    if attachment.status == PENDING and attachment.attempts:
        text.append(f" (attempts so far: {attachment.attempts})")
    if attachment.retag_pending:
        text.append(", re-tag queued")
    if attachment.failure_reason:
        text.append(": ")
        text.append(literal(attachment.failure_reason))
    return text


def labels_text(attachment: board_pb2.Attachment, limit: int | None = 5) -> Text:
    """The largest ``limit`` labels (all with None) as ``dog 31.0%, person 5.2%``; names literal."""
    parts = [join(literal(x.name), f" {x.fraction:.1%}") for x in attachment.labels[:limit]]
    if limit is not None and len(attachment.labels) > limit:
        parts.append(Text(f"+{len(attachment.labels) - limit} more"))
    return Text(", ").join(parts)


def model_text(model: board_pb2.ModelProvenance) -> Text:
    """The model's identity: arch, archive sha256 prefix, weights, UNTRAINED."""
    if not model.arch and not model.archive_sha256:
        return Text()
    text = literal(model.arch or "?")
    if model.archive_sha256:
        text.append("@")
        text.append(literal(model.archive_sha256[:12]))
    details = [literal(model.weights)] if model.weights else []
    if model.untrained:
        details.append(Text("UNTRAINED"))
    if details:
        text.append(" ")
        text.append(join("[", Text(", ").join(details), "]"))
    return text


def attachment_table(attachments: Sequence[board_pb2.Attachment]) -> Table:
    """One row per attachment; a single attachment shows all its labels, a list the largest five."""
    limit = None if len(attachments) == 1 else 5
    table = Table("id", "post_id", "filename", "type", "size", "status", "labels", "model")
    for row in attachments:
        table.add_row(
            str(row.id),
            str(row.post_id),
            literal(row.filename),
            literal(row.content_type),
            f"{row.width}x{row.height}",
            status_text(row),
            labels_text(row, limit),
            model_text(row.model),
        )
    return table


def _demo_images(folder: Path | None, limit: int) -> Iterator[tuple[str, bytes]]:
    if folder is not None:
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise SystemExit(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
        for path in paths[:limit]:
            yield path.name, path.read_bytes()
        return
    from PIL import Image, ImageDraw

    # Without a folder: simple generated scenes, enough to exercise the pipeline (an untrained or real model
    # will label them as it sees fit).
    for index in range(limit):
        image = Image.new("RGB", (320, 240), (90 + 30 * index, 150, 220 - 40 * index))
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, 170, 320, 240), fill=(60, 140, 60))
        draw.ellipse((100 + 20 * index, 90, 200 + 20 * index, 200), fill=(120, 80, 40))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        yield f"scene-{index + 1}.jpg", buffer.getvalue()


def run_demo(client: BoardClient, args: argparse.Namespace, output: Output) -> int:
    """As the signed-in user, or as a new demo user signed up and in for the tour (and signed out after):
    a post, a few images, their tagging streamed, then the posts found by each label."""
    console = output.progress
    stamp = time.strftime("%Y%m%d-%H%M%S")
    signed_up = client.token is None
    if signed_up:
        email = f"demo-{stamp}-{secrets.token_hex(3)}@example.org"
        # A throw-away password, never shown: the demo signs out at the end and nobody needs it again.
        password = secrets.token_urlsafe(24)
        user = client.create_user("Demo", email, password)
        client.sign_in(email, password)
        console.print(join("signed up and signed in as ", literal(user.name), f" (user #{user.id})"))
    try:
        return _demo_tour(client, args, output, stamp)
    finally:
        if signed_up:
            client.sign_out()
            console.print("signed out of the demo account (`board login` to post as yourself)")


def _demo_tour(client: BoardClient, args: argparse.Namespace, output: Output, stamp: str) -> int:
    console = output.progress
    post = client.create_post(0, "My photos", f"Posted by `board demo` at {stamp}")
    console.print(f"created post #{post.id}")
    added = []
    for name, data in _demo_images(args.images, args.limit):
        attachment = client.upload_attachment(post.id, name, data)
        console.print(
            join("attached ", status_line(attachment), f" ({attachment.width}x{attachment.height})")
        )
        added.append(attachment)
    console.print("waiting for the model server to tag them ...")
    done = [follow(client, a.id, args.wait_timeout, _printer(output), last=a) or a for a in added]
    _explain_unsettled(done, args.wait_timeout, output)
    if not output.json:
        output.out.print(attachment_table(done))
    labels = sorted({x.name for a in done for x in a.labels if x.fraction >= 0.01 and x.name != "background"})
    found: dict[str, list[int]] = {}
    for label in labels:
        found[label] = [p.id for p in client.iter_posts(label=label)]
        console.print(join("board posts list --label ", literal(label), f"  →  posts {found[label]}"))
    if any(a.model.untrained for a in done):
        console.print(
            Text.assemble(("note:", "bold yellow"), " the model is UNTRAINED, so these labels are noise")
        )
    if output.json:
        output.emit(
            {
                "user_id": post.user_id,
                "post_id": post.id,
                "attachments": [attachment_to_dict(a) for a in done],
                "posts_by_label": found,
            }
        )
    return 0 if all(a.status == TAGGED for a in done) else 1


def image_files(paths: Sequence[Path]) -> list[Path]:
    """Expand folders into their image files (sorted); files are kept as given."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(path)
    return files
