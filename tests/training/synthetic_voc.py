"""A small synthetic VOC-format dataset: coloured shapes on a noisy background, with known palette masks.

Class 1 = red rectangles, 2 = green ellipses, 3 = blue diamonds (background = 0). Like VOC, a thin band
around every shape's outline is marked 255 (ignore).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from training.data import voc_palette

CLASS_NAMES = ("background", "rectangle", "ellipse", "diamond")
COLOURS = {1: (220, 40, 40), 2: (40, 200, 60), 3: (50, 70, 230)}
NOISE = 30  # per-pixel uniform noise amplitude on the grey background
BORDER = 3  # ignore-band width in pixels drawn over each outline (VOC's is about 5)


@dataclass(frozen=True)
class SyntheticVOC:
    root: Path
    class_names: tuple[str, ...]
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]


def _draw_shape(
    draw_image: ImageDraw.ImageDraw,
    draw_mask: ImageDraw.ImageDraw,
    label: int,
    box: tuple[int, int, int, int],
) -> None:
    left, top, right, bottom = box
    colour = tuple(min(255, max(0, c + random.randint(-25, 25))) for c in COLOURS[label])
    if label == 1:
        draw_image.rectangle(box, fill=colour)
        draw_mask.rectangle(box, fill=label, outline=255, width=BORDER)
    elif label == 2:
        draw_image.ellipse(box, fill=colour)
        draw_mask.ellipse(box, fill=label, outline=255, width=BORDER)
    else:
        # A diamond, not a triangle: a triangle's thin tips are finer than DeepLabv3's 1/16 output grid.
        points = [
            ((left + right) // 2, top),
            (right, (top + bottom) // 2),
            ((left + right) // 2, bottom),
            (left, (top + bottom) // 2),
        ]
        draw_image.polygon(points, fill=colour)
        draw_mask.polygon(points, fill=label, outline=255, width=BORDER)


def make_sample(
    size: int, rng_seed: int, num_classes: int = len(CLASS_NAMES)
) -> tuple[Image.Image, Image.Image]:
    """One (RGB image, palette mask) pair of ``size``×``size`` with 1–2 large shapes.

    Shapes span 30–70 % of the image: DeepLabv3 predicts at 1/16 resolution and upsamples, so small shapes
    would measure the upsampling's blur rather than whether the network learned.
    """
    random.seed(rng_seed)
    noise = np.random.default_rng(rng_seed).integers(0, NOISE, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(noise + np.uint8(random.randint(70, 130)), "RGB")
    mask = Image.new("P", (size, size), 0)
    mask.putpalette(voc_palette())
    draw_image, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    for _ in range(random.randint(1, 2)):
        label = random.randint(1, num_classes - 1)
        extent = random.randint(size * 3 // 10, size * 7 // 10)
        left = random.randint(0, size - extent - 1)
        top = random.randint(0, size - extent - 1)
        _draw_shape(draw_image, draw_mask, label, (left, top, left + extent, top + extent))
    return image, mask


def write_synthetic_voc(
    root: Path,
    *,
    n_train: int = 48,
    n_val: int = 12,
    size: int = 96,
    seed: int = 0,
    num_classes: int = len(CLASS_NAMES),
) -> SyntheticVOC:
    """Write the VOC layout (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/) under ``root``."""
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    ids = [f"2026_{index:06d}" for index in range(n_train + n_val)]
    for index, image_id in enumerate(ids):
        image, mask = make_sample(size, seed * 100_003 + index, num_classes)
        image.save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        mask.save(root / "SegmentationClass" / f"{image_id}.png")
    train_ids, val_ids = tuple(ids[:n_train]), tuple(ids[n_train:])
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(train_ids) + "\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(val_ids) + "\n")
    return SyntheticVOC(root, CLASS_NAMES[:num_classes], train_ids, val_ids)
