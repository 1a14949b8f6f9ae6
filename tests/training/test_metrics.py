"""ConfusionMatrix against a confusion matrix and scores computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from training.metrics import ConfusionMatrix

# 3 classes; 255 = ignore. Row-major 3x4 maps, two "images".
TARGET = torch.tensor(
    [
        [[0, 0, 1, 1], [0, 2, 2, 255], [1, 1, 2, 255]],
        [[2, 2, 0, 0], [255, 1, 1, 0], [0, 0, 0, 0]],
    ]
)
PREDICTION = torch.tensor(
    [
        [[0, 1, 1, 1], [0, 2, 0, 1], [1, 2, 2, 0]],
        [[2, 2, 0, 0], [0, 1, 0, 0], [0, 0, 2, 0]],
    ]
)
# Tallied by hand, row by row, over the 21 non-ignored pixels as (target, prediction):
#   image 1: (0,0) (0,1) (1,1) (1,1) | (0,0) (2,2) (2,0) | (1,1) (1,2) (2,2)
#   image 2: (2,2) (2,2) (0,0) (0,0) | (1,1) (1,0) (0,0) | (0,0) (0,0) (0,2) (0,0)
# Rows = target, columns = prediction; row sums 10, 6, 5; column sums 10, 5, 6; diagonal 16.
EXPECTED = torch.tensor(
    [
        [8, 1, 1],
        [1, 4, 1],
        [1, 0, 4],
    ]
)
IOU = (8 / (10 + 10 - 8), 4 / (6 + 5 - 4), 4 / (5 + 6 - 4))


def test_confusion_matrix_matches_hand_count() -> None:
    confusion = ConfusionMatrix(3)
    confusion.update(TARGET, PREDICTION)

    assert confusion.mat.tolist() == EXPECTED.tolist()


def test_scores_match_hand_computation() -> None:
    confusion = ConfusionMatrix(3)
    confusion.update(TARGET[:1], PREDICTION[:1])
    confusion.update(TARGET[1:], PREDICTION[1:])  # accumulates across batches

    metrics = confusion.compute(("background", "cat", "dog"))

    # IoU_c = TP_c / (row_c + col_c - TP_c)
    assert metrics.pixels == 21
    assert metrics.pixel_accuracy == pytest.approx(16 / 21)
    assert metrics.per_class_iou == pytest.approx(IOU)
    assert metrics.mean_iou == pytest.approx(sum(IOU) / 3)
    assert metrics.to_json()["per_class_iou"]["cat"] == pytest.approx(4 / 7)


def test_class_absent_everywhere_has_no_iou_and_is_left_out_of_the_mean() -> None:
    confusion = ConfusionMatrix(4)
    confusion.update(TARGET, PREDICTION)

    metrics = confusion.compute()

    assert metrics.per_class_iou[3] is None
    assert metrics.mean_iou == pytest.approx(sum(IOU) / 3)


def test_perfect_prediction_scores_one_and_empty_matrix_is_nan() -> None:
    confusion = ConfusionMatrix(3)
    confusion.update(TARGET, TARGET.clamp(max=2))
    assert confusion.compute().mean_iou == pytest.approx(1.0)
    assert confusion.compute().pixel_accuracy == pytest.approx(1.0)

    confusion.reset()
    assert math.isnan(confusion.compute().mean_iou)


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        ConfusionMatrix(3).update(TARGET, PREDICTION[:1])
