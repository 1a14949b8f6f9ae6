"""The attachment commands of the `board` console script (wired in clients/cli.py):

board attach POST_ID photo.jpg [more.png ...] [--wait]
board attachments list --post 3 | get 7 | delete 7 | content 7 --out photo.jpg | mask 7 --out mask.png
board demo [--images DIR]       # user, post, a few photos, wait for tagging, posts found by label
"""

from __future__ import annotations

import argparse
import io
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from clients.board import BoardClient
from clients.gen.board.v1 import board_pb2

logger = logging.getLogger(__name__)

COMMANDS = ("attach", "attachments", "demo")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
STATUS_NAMES = {
    board_pb2.ATTACHMENT_STATUS_PENDING: "PENDING",
    board_pb2.ATTACHMENT_STATUS_TAGGED: "TAGGED",
    board_pb2.ATTACHMENT_STATUS_FAILED: "FAILED",
}


def add_attachment_commands(resources: Any) -> None:
    """Add `attach`, `attachments` and `demo` to the `board` sub-command parser ``resources``."""
    attach = resources.add_parser("attach", help="attach image files to a post (tagged in the background)")
    attach.add_argument("post_id", type=int)
    attach.add_argument("files", nargs="+", type=Path, help="image files or folders of images")
    attach.add_argument("--content-type", default="", help="MIME type (default: sniffed by the server)")
    attach.add_argument("--wait", action="store_true", help="wait until each attachment is tagged")
    attach.add_argument("--wait-timeout", type=float, default=300.0, help="seconds to wait (default 300)")

    actions = resources.add_parser("attachments", help="attachments").add_subparsers(
        dest="action", required=True
    )
    actions.add_parser("list", help="a post's attachments").add_argument("--post", type=int, required=True)
    actions.add_parser("get", help="one attachment with its labels").add_argument("id", type=int)
    actions.add_parser("delete", help="delete an attachment").add_argument("id", type=int)
    for name, what in (("content", "the uploaded image"), ("mask", "the segmentation mask (PNG)")):
        command = actions.add_parser(name, help=f"save {what} to a file")
        command.add_argument("id", type=int)
        command.add_argument("--out", type=Path, required=True)

    demo = resources.add_parser(
        "demo", help="the newcomer's tour: post photos, wait for tags, search by label"
    )
    demo.add_argument("--images", type=Path, help="folder of images (default: a few generated pictures)")
    demo.add_argument("--limit", type=int, default=4, help="at most this many images (default 4)")
    demo.add_argument("--wait-timeout", type=float, default=300.0)


def attachment_to_dict(attachment: board_pb2.Attachment) -> dict[str, Any]:
    return json_format.MessageToDict(
        attachment, preserving_proto_field_name=True, always_print_fields_with_no_presence=False
    )


def run_attachment_command(client: BoardClient, args: argparse.Namespace) -> Any:
    """Perform an attachment command; return what to print (JSON-able), None for deletes."""
    if args.resource == "attach":
        added = [
            client.add_attachment(args.post_id, path.name, path.read_bytes(), args.content_type)
            for path in image_files(args.files)
        ]
        if args.wait:
            added = [client.wait_for_tagging(a.id, timeout=args.wait_timeout) for a in added]
        return {"attachments": [attachment_to_dict(a) for a in added]}
    if args.resource == "demo":
        return run_demo(client, args)
    if args.action == "list":
        return {"attachments": [attachment_to_dict(a) for a in client.list_attachments(args.post)]}
    if args.action == "get":
        return attachment_to_dict(client.get_attachment(args.id))
    if args.action == "delete":
        client.delete_attachment(args.id)
        return None
    if args.action == "content":
        data = client.get_attachment_content(args.id).data
    else:
        data = client.get_attachment_mask(args.id)
    args.out.write_bytes(data)
    return {"id": args.id, "saved": str(args.out), "bytes": len(data)}


def print_attachments(result: Any, args: argparse.Namespace) -> None:
    """Human-readable output of an attachment command."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if result is None:
        console.print(f"deleted attachment {args.id}")
        return
    if args.resource == "demo":
        return  # the demo prints as it goes
    if "saved" in result:
        console.print(f"saved {result['bytes']} bytes of attachment {result['id']} to {result['saved']}")
        return
    rows = result.get("attachments", [result])
    table = Table("id", "post_id", "filename", "type", "size", "status", "labels", "model")
    for row in rows:
        labels = ", ".join(f"{x['name']} {x['fraction']:.1%}" for x in row.get("labels", [])[:5])
        model = row.get("model", {})
        table.add_row(
            str(row["id"]),
            str(row["post_id"]),
            row["filename"],
            row["content_type"],
            f"{row.get('width', 0)}x{row.get('height', 0)}",
            row["status"].removeprefix("ATTACHMENT_STATUS_")
            + (f": {row['failure_reason']}" if row.get("failure_reason") else ""),
            labels,
            _model_text(model),
        )
    console.print(table)


def _model_text(model: dict[str, Any]) -> str:
    if not model:
        return ""
    untrained = ", UNTRAINED" if model.get("untrained") else ""
    return f"{model.get('arch', '')} ({model.get('weights', '')}{untrained})"


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


def run_demo(client: BoardClient, args: argparse.Namespace) -> dict[str, Any]:
    """Create a user and a post, attach images, wait for tagging, list posts by each label found."""
    from rich.console import Console

    console = Console(stderr=args.json)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    user = client.create_user("Demo", f"demo-{stamp}-{time.monotonic_ns() % 100000}@example.org")
    post = client.create_post(user.id, "My photos", f"Posted by `board demo` at {stamp}")
    console.print(f"created user #{user.id} and post #{post.id}")
    added = []
    for name, data in _demo_images(args.images, args.limit):
        attachment = client.add_attachment(post.id, name, data)
        console.print(
            f"attached {name} as #{attachment.id} ({attachment.width}x{attachment.height}): PENDING"
        )
        added.append(attachment)
    console.print("waiting for the model server to tag them ...")
    done = []
    for attachment in added:
        try:
            done.append(client.wait_for_tagging(attachment.id, timeout=args.wait_timeout))
        except TimeoutError:
            console.print(
                f"#{attachment.id} still PENDING after {args.wait_timeout:.0f}s: is the board server started "
                "with BOARD_SEGMENTATION_TARGET (make run does it)?"
            )
            done.append(client.get_attachment(attachment.id))
    result = {"user_id": user.id, "post_id": post.id, "attachments": [attachment_to_dict(a) for a in done]}
    if not args.json:
        print_attachments({"attachments": result["attachments"]}, argparse.Namespace(resource="attach"))
    labels = sorted({x.name for a in done for x in a.labels if x.fraction >= 0.01 and x.name != "background"})
    found: dict[str, list[int]] = {}
    for label in labels:
        found[label] = [p.id for p in client.iter_posts(label=label)]
        console.print(f"board posts list --label {label}  →  posts {found[label]}")
    if any(a.model.untrained for a in done):
        console.print("[bold yellow]note:[/] the model is UNTRAINED, so these labels are noise; see README")
    result["posts_by_label"] = found
    return result


def image_files(paths: Sequence[Path]) -> list[Path]:
    """Expand folders into their image files (sorted); files are kept as given."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(path)
    return files
