"""`segment`: send images to the DeepLabv3 served by TorchServe and save the masks.

segment photo.jpg --out mask.png --overlay overlay.png      # one image, prints the class table
segment photos/ --out masks/ --overlay overlays/ --rest     # a directory, with a progress bar
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageOps
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from clients.console_text import join, literal, plain_console
from clients.segment import (
    DEFAULT_KEY_FILE,
    DEFAULT_TIMEOUT_S,
    Segmentation,
    SegmentClient,
    SegmentError,
    ServingEndpoints,
    TokenSource,
    Transport,
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".mpo"}


def overlay(image_bytes: bytes, mask_png: bytes, alpha: float = 0.5) -> Image.Image:
    """The image as displayed (EXIF applied) with the mask's VOC colours blended over it (same size)."""
    with Image.open(io.BytesIO(image_bytes)) as raw:
        photo = ImageOps.exif_transpose(raw).convert("RGB")
    with Image.open(io.BytesIO(mask_png)) as raw_mask:
        colours = raw_mask.convert("RGB")
    if colours.size != photo.size:
        raise ValueError(f"mask {colours.size} does not match the image {photo.size}")
    return Image.blend(photo, colours, alpha)


def class_table(result: Segmentation, title: str) -> Table:
    """The classes of one answer; the file name, model and class names are shown literally."""
    model = join(
        literal(result.model.get("arch", "?")), ", UNTRAINED" if result.model.get("untrained") else ""
    )
    table = Table(title=join(literal(title), f"  ({result.width}x{result.height}, ", model, ")"))
    table.add_column("index", justify="right")
    table.add_column("class")
    table.add_column("pixels", justify="right")
    table.add_column("fraction", justify="right")
    for share in result.classes:
        table.add_row(str(share.index), literal(share.name), f"{share.pixels:,}", f"{share.fraction:.2%}")
    return table


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("image", type=Path, help="an image file or a directory of images")
    parser.add_argument("--out", type=Path, required=True, help="mask PNG (a directory for a directory)")
    parser.add_argument("--overlay", type=Path, help="blended picture (a directory for a directory)")
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--grpc", dest="transport", action="store_const", const="grpc", help="(default)")
    transport.add_argument("--rest", dest="transport", action="store_const", const="rest")
    parser.set_defaults(transport="grpc")
    parser.add_argument("--host", default=os.environ.get("SEG_HOST", "127.0.0.1"))
    parser.add_argument(
        "--inference-port", type=int, default=int(os.environ.get("SEG_INFERENCE_PORT", "8080"))
    )
    parser.add_argument(
        "--management-port", type=int, default=int(os.environ.get("SEG_MANAGEMENT_PORT", "8081"))
    )
    parser.add_argument(
        "--grpc-port", type=int, default=int(os.environ.get("SEG_GRPC_INFERENCE_PORT", "7070"))
    )
    parser.add_argument("--model", default="deeplabv3")
    parser.add_argument(
        "--key-file",
        type=Path,
        default=Path(os.environ.get("SEG_KEY_FILE", str(DEFAULT_KEY_FILE))),
        help="the inference key file printed by `make run` (or TorchServe's key_file.json)",
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per request")
    return parser


def _jobs(args: argparse.Namespace) -> list[tuple[Path, Path, Path | None]]:
    if not args.image.is_dir():
        return [(args.image, args.out, args.overlay)]
    images = sorted(p for p in args.image.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    args.out.mkdir(parents=True, exist_ok=True)
    if args.overlay is not None:
        args.overlay.mkdir(parents=True, exist_ok=True)
    return [
        (p, args.out / f"{p.stem}.mask.png", args.overlay / f"{p.stem}.overlay.png" if args.overlay else None)
        for p in images
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    console = plain_console()
    endpoints = ServingEndpoints.local(
        args.host, args.inference_port, args.management_port, args.grpc_port, model_name=args.model
    )
    transport: Transport = args.transport
    jobs = _jobs(args)
    if not jobs:
        console.print(join("no images in ", literal(args.image)), style="red")
        return 2
    failures = 0
    tokens = TokenSource.from_key_file(args.key_file)
    with (
        SegmentClient(endpoints, tokens, timeout_s=args.timeout) as client,
        Progress(console=console, transient=True, disable=len(jobs) == 1) as progress,
    ):
        task = progress.add_task(f"segmenting over {transport}", total=len(jobs))
        for source, mask_path, overlay_path in jobs:
            try:
                image = source.read_bytes()
                result = client.segment(image, transport=transport)
                mask_path.write_bytes(result.mask_png)
                if overlay_path is not None:
                    overlay(image, result.mask_png).save(overlay_path)
                progress.console.print(class_table(result, source.name))
            except (SegmentError, OSError, ValueError) as exc:
                failures += 1
                progress.console.print(join(literal(source), ": ", literal(exc)), style="red")
            progress.advance(task)
    if failures:
        console.print(Text(f"{failures} of {len(jobs)} failed", style="red"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
