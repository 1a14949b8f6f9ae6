"""ConfusionMatrix → pixel accuracy, per-class IoU, mIoU (as in torchvision's references/segmentation)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from training.data import IGNORE_INDEX


@dataclass(frozen=True)
class SegmentationMetrics:
    """Scores from a confusion matrix. IoU is None for a class absent from both targets and predictions."""

    class_names: tuple[str, ...]
    pixel_accuracy: float
    per_class_iou: tuple[float | None, ...]
    mean_iou: float  # mean over classes with a defined IoU
    pixels: int

    def to_json(self) -> dict[str, Any]:
        return {
            "pixel_accuracy": self.pixel_accuracy,
            "mean_iou": self.mean_iou,
            "per_class_iou": dict(zip(self.class_names, self.per_class_iou, strict=True)),
            "pixels": self.pixels,
        }


class ConfusionMatrix:
    """Accumulates a ``num_classes``×``num_classes`` matrix, rows = target class, columns = predicted class.

    Target pixels equal to ``ignore_index`` (or otherwise outside ``[0, num_classes)``) are not counted.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros((num_classes, num_classes), dtype=torch.int64)

    def update(self, target: torch.Tensor, prediction: torch.Tensor) -> None:
        """Add a batch: ``target`` and ``prediction`` are integer class maps of the same shape."""
        if target.shape != prediction.shape:
            raise ValueError(
                f"target shape {tuple(target.shape)} != prediction shape {tuple(prediction.shape)}"
            )
        target = target.flatten().to("cpu", torch.int64)
        prediction = prediction.flatten().to("cpu", torch.int64)
        keep = (target >= 0) & (target < self.num_classes) & (target != self.ignore_index)
        index = self.num_classes * target[keep] + prediction[keep].clamp(0, self.num_classes - 1)
        self.mat += torch.bincount(index, minlength=self.num_classes**2).reshape(self.num_classes, -1)

    def reset(self) -> None:
        self.mat.zero_()

    def compute(self, class_names: Sequence[str] | None = None) -> SegmentationMetrics:
        names = tuple(class_names) if class_names is not None else tuple(map(str, range(self.num_classes)))
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        mat = self.mat.to(torch.float64)
        total = float(mat.sum())
        diagonal = torch.diag(mat)
        union = mat.sum(0) + mat.sum(1) - diagonal
        ious: list[float | None] = [
            float(diagonal[i] / union[i]) if float(union[i]) > 0 else None for i in range(self.num_classes)
        ]
        defined = [iou for iou in ious if iou is not None]
        return SegmentationMetrics(
            class_names=names,
            pixel_accuracy=float(diagonal.sum()) / total if total else math.nan,
            per_class_iou=tuple(ious),
            mean_iou=sum(defined) / len(defined) if defined else math.nan,
            pixels=int(total),
        )
