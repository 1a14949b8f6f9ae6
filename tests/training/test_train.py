"""A real (short, CPU) training run on synthetic VOC-format data, then evaluate, resume and export from it."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.training.synthetic_voc import CLASS_NAMES, SyntheticVOC, write_synthetic_voc
from training import evaluate, train
from training.export import METADATA_NAME, export_archive
from training.metrics import SegmentationMetrics
from training.model import build_model

ARCH = "deeplabv3_mobilenet_v3_large"
IMAGE_SIZE = 128
EPOCHS = 24
NAMES = CLASS_NAMES[:3]  # background, rectangle, ellipse
TRAIN_IMAGES = 16
# A config that learns the synthetic shapes in under 30 s of one CPU core, from random weights: small images,
# three classes, 48 SGD steps, and BN statistics that keep up with a short run. Deterministic (seed 0, one
# thread): mIoU 0.758, where the untrained model scores 0.06 (24 images: 0.822; 48: 0.921 for 3x the CPU).
TRAIN_FLAGS = [
    "--arch", ARCH,
    "--weights", "random",
    "--num-classes", str(len(NAMES)),
    "--class-names", ",".join(NAMES),
    "--batch-size", "8",
    "--lr", "0.08",
    "--bn-momentum", "0.1",
    "--crop-size", "96",
    "--min-scale", "0.75",
    "--max-scale", "1.25",
    "--base-size", str(IMAGE_SIZE),
    "--workers", "0",
    "--seed", "0",
    "--no-progress",
]  # fmt: skip


@dataclass(frozen=True)
class TrainedRun:
    voc: SyntheticVOC
    output_dir: Path
    metrics: SegmentationMetrics
    seconds: float


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    # Two cores shared with other test processes: one intra-op thread avoids OpenMP threads waiting on each
    # other when a core is taken (measured 0.7 s vs 4-9 s per step under load).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, single_thread: None) -> TrainedRun:
    import time

    root = tmp_path_factory.mktemp("train")
    voc = write_synthetic_voc(
        root / "voc", n_train=TRAIN_IMAGES, n_val=12, size=IMAGE_SIZE, num_classes=len(NAMES)
    )
    output_dir = root / "run"
    args = train.get_args_parser().parse_args(
        ["--data-path", str(voc.root), "--epochs", str(EPOCHS), "--output-dir", str(output_dir), *TRAIN_FLAGS]
    )
    started = time.perf_counter()
    metrics = train.main(args)
    assert metrics is not None
    return TrainedRun(voc, output_dir, metrics, time.perf_counter() - started)


@pytest.mark.slow
def test_short_cpu_training_learns_the_synthetic_shapes(trained: TrainedRun) -> None:
    print(f"trained in {trained.seconds:.0f} s: mIoU {trained.metrics.mean_iou:.3f}")
    assert trained.metrics.class_names == NAMES
    assert all(iou is not None for iou in trained.metrics.per_class_iou)
    assert trained.metrics.mean_iou >= 0.7


@pytest.mark.slow  # the module's training run
def test_checkpoint_stores_args_epoch_optimizer_and_class_names(trained: TrainedRun) -> None:
    checkpoint = torch.load(trained.output_dir / train.CHECKPOINT_NAME, map_location="cpu", weights_only=True)

    assert checkpoint["epoch"] == EPOCHS - 1
    assert checkpoint["arch"] == ARCH
    assert checkpoint["class_names"] == list(NAMES)
    assert checkpoint["args"]["lr"] == 0.08 and checkpoint["args"]["data_path"] == str(trained.voc.root)
    assert checkpoint["initial_weights"]["source"] == "random"
    assert {"state", "param_groups"} <= set(checkpoint["optimizer"])
    assert checkpoint["lr_scheduler"]["last_epoch"] == EPOCHS * TRAIN_IMAGES // 8  # stepped per batch of 8


@pytest.mark.slow  # the module's training run
def test_evaluate_cli_reports_the_same_scores_as_json(trained: TrainedRun, tmp_path: Path) -> None:
    output = tmp_path / "eval.json"
    args = evaluate.get_args_parser().parse_args(
        [
            "--checkpoint",
            str(trained.output_dir / train.CHECKPOINT_NAME),
            "--data-path",
            str(trained.voc.root),
            "--workers",
            "0",
            "--device",
            "cpu",
            "--output-json",
            str(output),
        ]
    )

    metrics = evaluate.main(args)

    report = json.loads(output.read_text())
    assert metrics.mean_iou == pytest.approx(trained.metrics.mean_iou)
    assert report["eval_size"] == IMAGE_SIZE  # taken from the checkpoint's args
    assert report["mean_iou"] == pytest.approx(trained.metrics.mean_iou)
    assert set(report["per_class_iou"]) == set(NAMES)
    assert report["weights"] == "checkpoint" and report["images"] == 12


@pytest.mark.slow  # the module's training run
def test_resume_continues_from_the_next_epoch(trained: TrainedRun, tmp_path: Path) -> None:
    checkpoint = tmp_path / "start.pth"
    shutil.copy(trained.output_dir / train.CHECKPOINT_NAME, checkpoint)
    args = train.get_args_parser().parse_args(
        [
            "--data-path", str(trained.voc.root),
            "--epochs", str(EPOCHS + 1),
            "--output-dir", str(tmp_path / "resumed"),
            "--resume", str(checkpoint),
            "--val-set", "",
            *TRAIN_FLAGS,
        ]
    )  # fmt: skip

    assert train.main(args) is None

    resumed = torch.load(tmp_path / "resumed" / train.CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert resumed["epoch"] == EPOCHS
    assert resumed["lr_scheduler"]["last_epoch"] == (EPOCHS + 1) * TRAIN_IMAGES // 8
    assert resumed["class_names"] == list(NAMES)


@pytest.mark.slow  # the module's training run
@pytest.mark.integration
def test_export_of_a_trained_checkpoint_records_its_provenance(trained: TrainedRun, tmp_path: Path) -> None:
    import hashlib

    handler = tmp_path / "handler.py"
    handler.write_text("def handle(data, context):\n    return data\n")
    checkpoint = trained.output_dir / train.CHECKPOINT_NAME

    result = export_archive(
        ARCH,
        checkpoint,
        tmp_path / "store",
        handler=handler,
        input_size=IMAGE_SIZE,
        parity_shapes=((1, 3, IMAGE_SIZE, IMAGE_SIZE),),
        program=False,  # the provenance is the archive's (test_export.py checks the .pt2 carries the same)
    )

    with zipfile.ZipFile(result.mar_path) as archive:
        meta = json.loads(archive.read(METADATA_NAME))
    assert meta["weights"] == "checkpoint" and meta["untrained"] is False
    assert meta["weights_file"] == str(checkpoint)
    assert meta["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert meta["class_names"] == list(NAMES) and meta["num_classes"] == 3
    assert meta["input_size"] == IMAGE_SIZE
    assert result.parity.max_abs_diff <= 1e-4


def test_same_seed_gives_the_same_weights(tmp_path: Path, single_thread: None) -> None:
    voc = write_synthetic_voc(tmp_path / "voc", n_train=8, n_val=2, size=48, num_classes=len(NAMES))
    states = []
    for run in ("a", "b"):
        args = train.get_args_parser().parse_args(
            [
                "--data-path", str(voc.root),
                "--epochs", "1",
                "--output-dir", str(tmp_path / run),
                "--val-set", "",
                *TRAIN_FLAGS,
                "--crop-size", "48",
            ]
        )  # fmt: skip
        train.main(args)
        states.append(torch.load(tmp_path / run / train.CHECKPOINT_NAME, weights_only=True)["model"])

    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
    assert not torch.equal(states[0]["classifier.4.weight"], _initial_head(seed=0))


def _initial_head(seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    head: torch.Tensor = build_model(ARCH, len(NAMES), "random").model.state_dict()["classifier.4.weight"]
    return head


def test_poly_schedule_decays_to_zero() -> None:
    assert train.poly_lr_factor(0, 100) == 1.0
    assert train.poly_lr_factor(50, 100) == pytest.approx(0.5**0.9)
    assert train.poly_lr_factor(100, 100) == 0.0


def test_amp_needs_cuda(tmp_path: Path) -> None:
    args = train.get_args_parser().parse_args(["--data-path", str(tmp_path), "--device", "cpu", "--amp"])

    with pytest.raises(ValueError, match="--amp needs a CUDA device"):
        train.main(args)
