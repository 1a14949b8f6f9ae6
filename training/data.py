"""VOC-format segmentation data: the dataset reader and the joint (image, mask) transforms.

Layout, as in PASCAL VOC 2012::

    <root>/JPEGImages/<id>.jpg
    <root>/SegmentationClass/<id>.png        palette PNGs, index = class, 255 = ignore
    <root>/ImageSets/Segmentation/{train,val,trainaug}.txt

SBD-augmented training (``trainaug``, 10,582 images) takes ``extra_masks``: a folder of PNG masks in the same
format (e.g. ``SegmentationClassAug``) consulted for ids that ``SegmentationClass`` lacks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from seg_handler import image_policy

IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

JointTransform = Callable[[Image.Image, Image.Image], tuple[torch.Tensor, torch.Tensor]]
PilTransform = Callable[[Image.Image, Image.Image], tuple[Image.Image, Image.Image]]


class DatasetError(RuntimeError):
    """The dataset on disk is not usable as given; the message names the file or folder."""


def _random_uniform(low: float, high: float) -> float:
    # torch's RNG: seeded by --seed in the main process and per worker by the DataLoader.
    return low + (high - low) * float(torch.rand(()))


class RandomScale:
    """Scale image and mask by a factor drawn from [min_scale, max_scale] (mask with nearest neighbour)."""

    def __init__(self, min_scale: float = 0.5, max_scale: float = 2.0) -> None:
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale = min_scale
        self.max_scale = max_scale

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image]:
        factor = _random_uniform(self.min_scale, self.max_scale)
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        return image.resize(size, Image.Resampling.BILINEAR), mask.resize(size, Image.Resampling.NEAREST)


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image]:
        if float(torch.rand(())) < self.p:
            flip = Image.Transpose.FLIP_LEFT_RIGHT
            return image.transpose(flip), mask.transpose(flip)
        return image, mask


class RandomCrop:
    """Crop ``size``×``size``; smaller inputs are padded first (image with 0, mask with the ignore index)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image]:
        width, height = max(image.width, self.size), max(image.height, self.size)
        if (width, height) != image.size:
            padded_image = Image.new(image.mode, (width, height), 0)
            padded_image.paste(image, (0, 0))
            padded_mask = Image.new(mask.mode, (width, height), IGNORE_INDEX)
            if mask.mode == "P":
                palette = mask.getpalette()
                if palette is not None:
                    padded_mask.putpalette(palette)
            padded_mask.paste(mask, (0, 0))
            image, mask = padded_image, padded_mask
        left = int(torch.randint(0, width - self.size + 1, ()))
        top = int(torch.randint(0, height - self.size + 1, ()))
        box = (left, top, left + self.size, top + self.size)
        return image.crop(box), mask.crop(box)


class ResizeShorterSide:
    """Resize so the shorter side is ``size`` (torchvision's evaluation preset)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image]:
        short = min(image.size)
        if short == self.size:
            return image, mask
        scale = self.size / short
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return image.resize(size, Image.Resampling.BILINEAR), mask.resize(size, Image.Resampling.NEAREST)


def to_tensors(image: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB PIL image → ImageNet-normalised float32 [3,H,W]; mask → int64 [H,W] of class indices."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).copy()).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    normalised = (pixels / 255.0 - mean) / std
    target = torch.from_numpy(np.asarray(mask, dtype=np.int64).copy())
    return normalised, target


class Compose:
    """PIL joint transforms in order, then :func:`to_tensors`."""

    def __init__(self, transforms: Sequence[PilTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        for transform in self.transforms:
            image, mask = transform(image, mask)
        return to_tensors(image, mask)


def train_transforms(
    crop_size: int = 513, min_scale: float = 0.5, max_scale: float = 2.0, hflip: float = 0.5
) -> Compose:
    """Random scale, flip, crop with ignore padding, ImageNet normalisation (DeepLab's training recipe)."""
    return Compose([RandomScale(min_scale, max_scale), RandomHorizontalFlip(hflip), RandomCrop(crop_size)])


def eval_transforms(resize: int = 520) -> Compose:
    """Shorter side to ``resize``, ImageNet normalisation (torchvision's evaluation preset)."""
    return Compose([ResizeShorterSide(resize)])


class VOCSegmentation(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A VOC-format segmentation split.

    Raises:
        DatasetError: a folder or the split list is missing, an image or mask listed in the split is missing,
            or (when an item is read) a mask is not a single-channel PNG of its image's size.
    """

    def __init__(
        self,
        root: str | Path,
        image_set: str = "train",
        transforms: JointTransform | None = None,
        extra_masks: str | Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.image_set = image_set
        self.transforms = transforms or Compose([])  # tensors at the stored size
        image_dir = self.root / "JPEGImages"
        mask_dir = self.root / "SegmentationClass"
        list_file = self.root / "ImageSets" / "Segmentation" / f"{image_set}.txt"
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder not found: {self.root}")
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise DatasetError(f"missing folder {folder} (expected a VOC layout under {self.root})")
        self.extra_masks = Path(extra_masks) if extra_masks is not None else None
        if self.extra_masks is not None and not self.extra_masks.is_dir():
            raise DatasetError(f"extra masks folder not found: {self.extra_masks}")
        if not list_file.is_file():
            available = (
                sorted(p.stem for p in list_file.parent.glob("*.txt")) if list_file.parent.is_dir() else []
            )
            raise DatasetError(
                f"split list not found: {list_file} (available: {', '.join(available) or 'none'})"
            )

        ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise DatasetError(f"split list {list_file} is empty")
        self.images: list[Path] = []
        self.masks: list[Path] = []
        missing_images: list[str] = []
        missing_masks: list[str] = []
        for image_id in ids:
            image = image_dir / f"{image_id}.jpg"
            mask = mask_dir / f"{image_id}.png"
            if not mask.is_file() and self.extra_masks is not None:
                mask = self.extra_masks / f"{image_id}.png"
            if not image.is_file():
                missing_images.append(image_id)
            if not mask.is_file():
                missing_masks.append(image_id)
            self.images.append(image)
            self.masks.append(mask)
        if missing_images:
            raise DatasetError(
                f"{len(missing_images)} image(s) of {list_file.name} missing from {image_dir}, "
                f"e.g. {', '.join(f'{i}.jpg' for i in missing_images[:3])}"
            )
        if missing_masks:
            where = str(mask_dir) + (f" or {self.extra_masks}" if self.extra_masks else "")
            raise DatasetError(
                f"{len(missing_masks)} mask(s) of {list_file.name} missing from {where}, "
                f"e.g. {', '.join(f'{i}.png' for i in missing_masks[:3])}"
                + ("" if self.extra_masks else " (SBD trainaug needs --extra-masks)")
            )

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[Image.Image, Image.Image]:
        """The raw (RGB image, mask) pair at ``index``, checked for mode and size."""
        image = Image.open(self.images[index]).convert("RGB")
        mask = Image.open(self.masks[index])
        if mask.mode not in ("P", "L"):
            raise DatasetError(
                f"mask {self.masks[index]} has mode {mask.mode}; expected a palette or grayscale PNG"
            )
        if mask.size != image.size:
            raise DatasetError(
                f"mask {self.masks[index]} is {mask.width}x{mask.height} but its image "
                f"{self.images[index]} is {image.width}x{image.height}"
            )
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        return self.transforms(image, mask)


def pad_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack items of different sizes: images padded with 0, masks with the ignore index."""
    height = max(image.shape[-2] for image, _ in batch)
    width = max(image.shape[-1] for image, _ in batch)
    images = torch.zeros((len(batch), 3, height, width), dtype=batch[0][0].dtype)
    targets = torch.full((len(batch), height, width), IGNORE_INDEX, dtype=torch.int64)
    for index, (image, target) in enumerate(batch):
        images[index, :, : image.shape[-2], : image.shape[-1]] = image
        targets[index, : target.shape[-2], : target.shape[-1]] = target
    return images, targets


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 RGB triples, flattened) used for palette mask PNGs."""
    return image_policy.voc_palette()
