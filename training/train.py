"""Train DeepLabv3 on a VOC-format dataset (torchvision's references/segmentation, without distributed mode).

    python -m training.train --data-path VOCdevkit/VOC2012 --train-set trainaug \
        --extra-masks VOCdevkit/VOC2012/SegmentationClassAug --arch deeplabv3_resnet101 \
        --weights imagenet-backbone --epochs 30 --batch-size 8 --lr 0.01 --aux-loss

SGD with the poly learning-rate schedule (per iteration), optional aux loss, AMP when on CUDA. Every epoch
writes ``<output-dir>/checkpoint.pth`` holding the model, optimizer, scheduler, epoch, args and class names;
``--resume`` continues from it; ``python -m training.evaluate`` and ``python -m training.export`` read it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn
from torch.utils.data import DataLoader

from seg_handler.image_policy import VOC_CLASSES
from training.data import (
    IGNORE_INDEX,
    DatasetError,
    VOCSegmentation,
    eval_transforms,
    pad_collate,
    train_transforms,
)
from training.evaluate import evaluate, metrics_table
from training.metrics import SegmentationMetrics
from training.model import ARCHS, DEFAULT_ARCH, WEIGHT_CHOICES, WeightsError, build_model

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pth"
AUX_LOSS_WEIGHT = 0.5  # torchvision's references weigh the aux head's loss by half


def poly_lr_factor(iteration: int, total: int, power: float = 0.9) -> float:
    """DeepLab's poly schedule: (1 - it/total)^power, the multiplier on the base learning rate."""
    return math.pow(max(0.0, 1.0 - iteration / max(1, total)), power)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def segmentation_loss(outputs: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on ``out`` (+ half-weighted ``aux`` when present), ignoring the 255 pixels."""
    loss = nn.functional.cross_entropy(outputs["out"], target, ignore_index=IGNORE_INDEX)
    if "aux" in outputs:
        loss = loss + AUX_LOSS_WEIGHT * nn.functional.cross_entropy(
            outputs["aux"], target, ignore_index=IGNORE_INDEX
        )
    return loss


def _class_names(args: argparse.Namespace) -> tuple[str, ...]:
    if args.class_names:
        names = tuple(name.strip() for name in args.class_names.split(","))
        if len(names) != args.num_classes:
            raise ValueError(f"--class-names lists {len(names)} names for --num-classes {args.num_classes}")
        return names
    if args.num_classes == len(VOC_CLASSES):
        return VOC_CLASSES
    return tuple(f"class_{index}" for index in range(args.num_classes))


def _jsonable_args(args: argparse.Namespace) -> dict[str, Any]:
    # Plain types only, so checkpoints load with torch.load(weights_only=True).
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # an interrupted save never leaves a truncated checkpoint behind


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, torch.Tensor]],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    epoch: int,
    epochs: int,
    scaler: torch.amp.GradScaler | None,
    show_progress: bool = True,
) -> float:
    """One pass over ``loader``; returns the mean loss. The scheduler steps per iteration (poly LR)."""
    model.train()
    total_loss = 0.0
    seen = 0
    started = time.perf_counter()
    columns = (
        TextColumn(f"epoch {epoch + 1}/{epochs}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[rate]:.1f} img/s  lr {task.fields[lr]:.2e}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not show_progress) as progress:
        task = progress.add_task(
            "train", total=len(loader), loss=math.nan, rate=0.0, lr=scheduler.get_last_lr()[0]
        )
        for batch_images, batch_targets in loader:
            images = batch_images.to(device, non_blocking=True)
            targets = batch_targets.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, enabled=scaler is not None):
                loss = segmentation_loss(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                torch.autograd.backward(scaler.scale(loss))
                scaler.step(optimizer)
                scaler.update()
            else:
                torch.autograd.backward(loss)
                optimizer.step()
            scheduler.step()
            batch = images.shape[0]
            total_loss += float(loss.detach()) * batch
            seen += batch
            rate = seen / max(time.perf_counter() - started, 1e-9)
            progress.update(
                task, advance=1, loss=float(loss.detach()), rate=rate, lr=scheduler.get_last_lr()[0]
            )
    if not show_progress:
        logger.info("epoch %d/%d: mean loss %.4f", epoch + 1, epochs, total_loss / max(seen, 1))
    return total_loss / max(seen, 1)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train DeepLabv3 on a VOC-format dataset", add_help=add_help)
    parser.add_argument("--data-path", type=Path, required=True, help="VOC root (JPEGImages/, ...)")
    parser.add_argument("--train-set", default="train", help="split list name: train | trainaug | ...")
    parser.add_argument("--val-set", default="val", help="split evaluated after training ('' to skip)")
    parser.add_argument(
        "--extra-masks", type=Path, default=None, help="SBD masks folder (SegmentationClassAug)"
    )
    parser.add_argument("--arch", default=DEFAULT_ARCH, choices=ARCHS)
    parser.add_argument(
        "--weights",
        default="imagenet-backbone",
        help=f"{' | '.join(WEIGHT_CHOICES)} | checkpoint path (default: imagenet-backbone)",
    )
    parser.add_argument("--num-classes", type=int, default=len(VOC_CLASSES))
    parser.add_argument("--class-names", default="", help="comma-separated, background first (default: VOC)")
    parser.add_argument("--aux-loss", action="store_true", help="train the aux head too (loss weight 0.5)")
    parser.add_argument(
        "--bn-momentum",
        type=float,
        default=None,
        help="BatchNorm running-stat momentum for every BN layer (default: the arch's own; MobileNetV3 uses "
        "0.01, too slow for short runs whose eval-mode statistics would lag behind training)",
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--crop-size", type=int, default=513)
    parser.add_argument("--min-scale", type=float, default=0.5)
    parser.add_argument("--max-scale", type=float, default=2.0)
    parser.add_argument("--base-size", type=int, default=520, help="evaluation: shorter side resized to this")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--amp", action=argparse.BooleanOptionalAction, default=None, help="default: on with CUDA"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/deeplabv3"))
    parser.add_argument("--resume", type=Path, default=None, help="a checkpoint.pth to continue from")
    parser.add_argument("--no-progress", action="store_true", help="log per epoch instead of a progress bar")
    return parser


def _train_loader(
    args: argparse.Namespace, device: torch.device
) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    train_set = VOCSegmentation(
        args.data_path,
        args.train_set,
        train_transforms(args.crop_size, args.min_scale, args.max_scale),
        extra_masks=args.extra_masks,
    )
    return DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=len(train_set) >= args.batch_size,
        num_workers=args.workers,
        collate_fn=pad_collate,
        generator=torch.Generator().manual_seed(args.seed),
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    module = getattr(model, name, None)
    return module if isinstance(module, nn.Module) else None


def _sgd(model: nn.Module, args: argparse.Namespace) -> torch.optim.SGD:
    """SGD over backbone + head, the aux head at 10x the learning rate (torchvision's references)."""
    groups: list[dict[str, Any]] = []
    for name in ("backbone", "classifier", "aux_classifier"):
        module = _submodule(model, name)
        if module is None:
            continue
        group: dict[str, Any] = {"params": [p for p in module.parameters() if p.requires_grad]}
        if name == "aux_classifier":
            group["lr"] = args.lr * 10
        groups.append(group)
    return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


def _set_bn_momentum(model: nn.Module, momentum: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def main(args: argparse.Namespace) -> SegmentationMetrics | None:
    """Train, checkpoint every epoch, evaluate on ``--val-set``; returns its metrics (None when skipped).

    Raises:
        WeightsError, DatasetError: unusable weights or data.
        ValueError: --amp without CUDA, class names that do not fit, or a resume checkpoint of another arch.
    """
    seed_everything(args.seed)
    device = torch.device(args.device)
    use_amp = device.type == "cuda" if args.amp is None else bool(args.amp)
    if use_amp and device.type != "cuda":
        raise ValueError("--amp needs a CUDA device")
    train_loader = _train_loader(args, device)

    resume: dict[str, Any] | None = None
    if args.resume is not None:
        resume = torch.load(args.resume, map_location="cpu", weights_only=True)
        if resume.get("arch") != args.arch:
            raise ValueError(f"{args.resume} is a {resume.get('arch')} checkpoint, not {args.arch}")
    # On resume the checkpoint's weights replace whatever we start from, so skip any download.
    weights = "random" if resume is not None else args.weights
    built = build_model(
        args.arch, args.num_classes, weights, aux_loss=args.aux_loss, class_names=_class_names(args)
    )
    class_names = built.class_names
    model = built.model.to(device)
    if args.bn_momentum is not None:
        _set_bn_momentum(model, args.bn_momentum)
    optimizer = _sgd(model, args)
    total_iterations = args.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: poly_lr_factor(it, total_iterations))
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    start_epoch = 0
    initial_weights = dataclasses.asdict(built.provenance)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["lr_scheduler"])
        if scaler is not None and "scaler" in resume:
            scaler.load_state_dict(resume["scaler"])
        start_epoch = int(resume["epoch"]) + 1
        class_names = tuple(resume["class_names"])
        initial_weights = resume.get("initial_weights", initial_weights)
        logger.info("resumed from %s after epoch %d", args.resume, start_epoch)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = args.output_dir / CHECKPOINT_NAME
    started = time.perf_counter()
    for epoch in range(start_epoch, args.epochs):
        train_one_epoch(
            model,
            train_loader,
            optimizer=optimizer,
            scheduler=scheduler,
            device=device,
            epoch=epoch,
            epochs=args.epochs,
            scaler=scaler,
            show_progress=not args.no_progress,
        )
        payload: dict[str, Any] = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "args": _jsonable_args(args),
            "arch": args.arch,
            "class_names": list(class_names),
            "initial_weights": initial_weights,
        }
        if scaler is not None:
            payload["scaler"] = scaler.state_dict()
        _save_checkpoint(checkpoint_path, payload)
    logger.info("training took %.1f s; checkpoint %s", time.perf_counter() - started, checkpoint_path)

    if not args.val_set:
        return None
    val_set = VOCSegmentation(args.data_path, args.val_set, eval_transforms(args.base_size))
    val_loader: DataLoader[tuple[torch.Tensor, torch.Tensor]] = DataLoader(
        val_set, batch_size=1, num_workers=min(args.workers, 2), collate_fn=pad_collate
    )
    confusion = evaluate(model, val_loader, device, len(class_names), show_progress=not args.no_progress)
    metrics = confusion.compute(class_names)
    Console().print(metrics_table(metrics, f"{args.arch} on {args.val_set} after {args.epochs} epochs"))
    return metrics


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        main(get_args_parser().parse_args())
    except (WeightsError, DatasetError, ValueError) as exc:
        logger.error("%s", exc)
        sys.exit(1)
