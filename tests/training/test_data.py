"""The VOC-format reader and joint transforms, on a small synthetic dataset written per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.training.synthetic_voc import SyntheticVOC, write_synthetic_voc
from training.data import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetError,
    RandomCrop,
    VOCSegmentation,
    eval_transforms,
    pad_collate,
    train_transforms,
    voc_palette,
)


@pytest.fixture
def voc(tmp_path: Path) -> SyntheticVOC:
    return write_synthetic_voc(tmp_path / "voc", n_train=4, n_val=2, size=48)


def test_reads_images_and_palette_masks_as_class_indices(voc: SyntheticVOC) -> None:
    dataset = VOCSegmentation(voc.root, "train")

    image, target = dataset[0]

    assert len(dataset) == 4
    assert image.dtype == torch.float32 and image.shape == (3, 48, 48)
    assert target.dtype == torch.int64 and target.shape == (48, 48)
    assert set(target.flatten().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}
    assert IGNORE_INDEX in target.flatten().tolist()  # the outline band


def test_eval_transform_resizes_shorter_side_and_normalises(voc: SyntheticVOC) -> None:
    dataset = VOCSegmentation(voc.root, "val", eval_transforms(96))
    raw_image, _ = dataset.load(0)

    image, target = dataset[0]

    assert image.shape == (3, 96, 96) and target.shape == (96, 96)
    # Nearest-neighbour keeps mask values; normalisation matches ImageNet statistics.
    assert set(target.flatten().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}
    red = raw_image.getpixel((0, 0))
    assert isinstance(red, tuple)
    expected = (red[0] / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert float(image[0, 0, 0]) == pytest.approx(expected, abs=0.1)


def test_train_transform_gives_fixed_crops(voc: SyntheticVOC) -> None:
    torch.manual_seed(0)
    dataset = VOCSegmentation(voc.root, "train", train_transforms(crop_size=40, min_scale=0.5, max_scale=2.0))

    shapes = {(tuple(image.shape), tuple(target.shape)) for image, target in (dataset[i] for i in range(4))}

    assert shapes == {((3, 40, 40), (40, 40))}


def test_crop_pads_image_with_zero_and_mask_with_ignore() -> None:
    image = Image.new("RGB", (10, 6), (200, 100, 50))
    mask = Image.new("P", (10, 6), 1)
    mask.putpalette(voc_palette())

    cropped_image, cropped_mask = RandomCrop(16)(image, mask)

    assert cropped_image.size == (16, 16) and cropped_mask.size == (16, 16)
    assert cropped_mask.getpixel((15, 15)) == IGNORE_INDEX
    assert cropped_image.getpixel((15, 15)) == (0, 0, 0)
    assert cropped_mask.getpixel((0, 0)) in (1, IGNORE_INDEX)


def test_pad_collate_stacks_different_sizes_with_ignore_padding() -> None:
    batch = [
        (torch.ones(3, 4, 6), torch.ones(4, 6, dtype=torch.int64)),
        (torch.ones(3, 5, 3), torch.zeros(5, 3)),
    ]

    images, targets = pad_collate(batch)

    assert images.shape == (2, 3, 5, 6) and targets.shape == (2, 5, 6)
    assert int(targets[0, 4, 0]) == IGNORE_INDEX and int(targets[1, 0, 5]) == IGNORE_INDEX
    assert float(images[1, 0, 0, 5]) == 0.0


def test_missing_dataset_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset folder not found"):
        VOCSegmentation(tmp_path / "nowhere")


def test_missing_subfolder_is_named(voc: SyntheticVOC) -> None:
    shutil.rmtree(voc.root / "SegmentationClass")

    with pytest.raises(DatasetError, match=r"missing folder .*SegmentationClass"):
        VOCSegmentation(voc.root)


def test_missing_split_list_names_the_available_ones(voc: SyntheticVOC) -> None:
    with pytest.raises(DatasetError, match=r"trainaug\.txt.*available: train, val"):
        VOCSegmentation(voc.root, "trainaug")


def test_missing_mask_is_named_and_points_at_extra_masks(voc: SyntheticVOC) -> None:
    victim = voc.train_ids[1]
    (voc.root / "SegmentationClass" / f"{victim}.png").unlink()

    with pytest.raises(
        DatasetError, match=rf"1 mask\(s\) of train\.txt missing .*{victim}\.png.*--extra-masks"
    ):
        VOCSegmentation(voc.root, "train")


def test_extra_masks_folder_fills_ids_missing_from_segmentation_class(
    voc: SyntheticVOC, tmp_path: Path
) -> None:
    # SBD's trainaug: masks for ids VOC's SegmentationClass lacks live in a separate folder.
    extra = tmp_path / "SegmentationClassAug"
    extra.mkdir()
    victim = voc.train_ids[2]
    shutil.move(voc.root / "SegmentationClass" / f"{victim}.png", extra / f"{victim}.png")
    (voc.root / "ImageSets" / "Segmentation" / "trainaug.txt").write_text("\n".join(voc.train_ids) + "\n")

    dataset = VOCSegmentation(voc.root, "trainaug", extra_masks=extra)

    assert dataset.masks[2] == extra / f"{victim}.png"
    assert dataset[2][1].shape == (48, 48)


def test_missing_extra_masks_folder_is_named(voc: SyntheticVOC, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="extra masks folder not found"):
        VOCSegmentation(voc.root, extra_masks=tmp_path / "nope")


def test_missing_image_is_named(voc: SyntheticVOC) -> None:
    (voc.root / "JPEGImages" / f"{voc.val_ids[0]}.jpg").unlink()

    with pytest.raises(DatasetError, match=rf"image\(s\) of val\.txt missing .*{voc.val_ids[0]}\.jpg"):
        VOCSegmentation(voc.root, "val")


def test_mask_of_another_size_is_reported_with_both_sizes(voc: SyntheticVOC) -> None:
    mask_path = voc.root / "SegmentationClass" / f"{voc.val_ids[0]}.png"
    Image.open(mask_path).resize((40, 48)).save(mask_path)
    dataset = VOCSegmentation(voc.root, "val")

    with pytest.raises(DatasetError, match=r"is 40x48 but its image .* is 48x48"):
        dataset[0]


def test_rgb_colour_mask_is_rejected(voc: SyntheticVOC) -> None:
    mask_path = voc.root / "SegmentationClass" / f"{voc.val_ids[1]}.png"
    Image.open(mask_path).convert("RGB").save(mask_path)
    dataset = VOCSegmentation(voc.root, "val")

    with pytest.raises(DatasetError, match="mode RGB; expected a palette"):
        dataset[1]
