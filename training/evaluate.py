"""Evaluate a model on a VOC-format split: pixel accuracy, per-class IoU and mIoU, as a table and JSON.

python -m training.evaluate --checkpoint runs/exp/checkpoint.pth --data-path VOCdevkit/VOC2012
python -m training.evaluate --weights pretrained --arch deeplabv3_resnet101 --data-path VOCdevkit/VOC2012
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader

from training.data import DatasetError, VOCSegmentation, eval_transforms, pad_collate
from training.metrics import ConfusionMatrix, SegmentationMetrics
from training.model import ARCHS, DEFAULT_ARCH, WeightsError, build_model

logger = logging.getLogger(__name__)


def evaluate(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    num_classes: int,
    *,
    show_progress: bool = True,
) -> ConfusionMatrix:
    """Run ``model`` (eval mode, ``out`` head) over ``loader`` and return the filled confusion matrix."""
    model.eval()
    confusion = ConfusionMatrix(num_classes)
    with (
        torch.inference_mode(),
        Progress(
            TextColumn("eval"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            disable=not show_progress,
            transient=True,
        ) as progress,
    ):
        task = progress.add_task("eval", total=len(loader))
        for images, targets in loader:
            logits = model(images.to(device, non_blocking=True))["out"]
            confusion.update(targets, logits.argmax(1).cpu())
            progress.advance(task)
    return confusion


def metrics_table(metrics: SegmentationMetrics, title: str = "evaluation") -> Table:
    table = Table(title=title)
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    for name, iou in zip(metrics.class_names, metrics.per_class_iou, strict=True):
        table.add_row(name, "n/a" if iou is None else f"{100 * iou:.2f}")
    table.add_section()
    table.add_row("mean IoU", f"{100 * metrics.mean_iou:.2f}")
    table.add_row("pixel accuracy", f"{100 * metrics.pixel_accuracy:.2f}")
    return table


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate DeepLabv3 on a VOC-format split", add_help=add_help
    )
    parser.add_argument("--data-path", type=Path, required=True, help="VOC root (JPEGImages/, ...)")
    parser.add_argument("--image-set", default="val")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a training.train checkpoint or a plain state_dict")
    source.add_argument("--weights", help="pretrained | random | ... (see training.model), with --arch")
    parser.add_argument(
        "--arch", default=None, choices=ARCHS, help="default: the checkpoint's, else resnet101"
    )
    parser.add_argument(
        "--eval-size", type=int, default=None, help="shorter side; default: checkpoint's or 520"
    )
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output-json", type=Path, default=None, help="default: <checkpoint>.eval.json")
    return parser


def main(args: argparse.Namespace) -> SegmentationMetrics:
    """Evaluate and report; returns the metrics.

    Raises:
        WeightsError, DatasetError: unusable weights or data (the CLI turns them into exit code 1).
    """
    if args.checkpoint is not None:
        # A training checkpoint knows its arch and eval size.
        arch = args.arch or _checkpoint_arch(args.checkpoint) or DEFAULT_ARCH
        built = build_model(arch, weights=args.checkpoint)
    else:
        built = build_model(args.arch or DEFAULT_ARCH, weights=args.weights)
    saved = (built.checkpoint or {}).get("args")
    saved_args = dict(saved) if isinstance(saved, dict) else {}
    eval_size = args.eval_size or int(str(saved_args.get("base_size", 520)))
    device = torch.device(args.device)
    dataset = VOCSegmentation(args.data_path, args.image_set, eval_transforms(eval_size))
    loader: DataLoader[tuple[torch.Tensor, torch.Tensor]] = DataLoader(
        dataset, batch_size=args.batch_size, num_workers=args.workers, collate_fn=pad_collate
    )
    model = built.model.to(device)
    started = time.perf_counter()
    confusion = evaluate(model, loader, device, built.num_classes)
    metrics = confusion.compute(built.class_names)
    seconds = time.perf_counter() - started

    Console().print(metrics_table(metrics, f"{built.arch} on {args.image_set} ({len(dataset)} images)"))
    output = args.output_json
    if output is None:
        output = (
            args.checkpoint.with_suffix(".eval.json")
            if args.checkpoint is not None
            else Path(f"{built.arch}-{args.weights}.eval.json")
        )
    report = {
        "arch": built.arch,
        "weights": built.provenance.source,
        "weights_file": built.provenance.weights_file,
        "sha256": built.provenance.sha256,
        "data_path": str(args.data_path),
        "image_set": args.image_set,
        "images": len(dataset),
        "eval_size": eval_size,
        "seconds": round(seconds, 3),
        **metrics.to_json(),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"metrics written to {output}")
    return metrics


def _checkpoint_arch(path: Path) -> str | None:
    """The arch a training.train checkpoint records, or None for a plain state_dict."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable files get build_model's clearer error
        return None
    arch = loaded.get("arch") if isinstance(loaded, dict) else None
    return arch if isinstance(arch, str) and arch in ARCHS else None


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        main(get_args_parser().parse_args())
    except (WeightsError, DatasetError) as exc:
        logger.error("%s", exc)
        sys.exit(1)
