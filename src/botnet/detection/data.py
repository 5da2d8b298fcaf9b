"""COCO-format instance data (images + ``instances`` json) as torchvision ``tv_tensors``, checked on load.

Every annotation is validated once, when the dataset is built, so that a bad file gives a clear message here
instead of an assertion deep inside torchvision's R-CNN. Problems are dropped or repaired and counted; with
``strict=True`` they raise :class:`AnnotationError` instead:

* ``unknown_category`` - ``category_id`` not in ``categories`` (dropped);
* ``unknown_image`` - ``image_id`` not in ``images`` (dropped);
* ``degenerate_box`` - not 4 finite numbers, or width / height <= 0 (dropped);
* ``clipped_box`` - reaches more than 1 px outside the image (clipped to it);
* ``outside_image`` - no area left inside the image (dropped);
* ``bad_segmentation`` - with masks: missing, or not polygons / RLE of the image's size (dropped).

Images left without annotations are counted (``empty_images``) and kept as negative samples, or dropped with
``drop_empty=True``; crowd annotations (``iscrowd=1``) are not training targets but COCOeval uses them.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import pil_to_tensor

from botnet.data.images import IMAGE_ERRORS, MAX_PIXELS, UnreadableLog, load_image

PROBLEMS = ("unknown_category", "unknown_image", "degenerate_box", "clipped_box", "outside_image", "bad_segmentation")
CLIP_TOLERANCE = 1.0  # px; COCO boxes often overshoot the border by a fraction of a pixel

Target = dict[str, Any]


class AnnotationError(ValueError):
    """An annotation file that cannot be used as it is (raised with ``strict=True`` or for malformed json)."""


@dataclass
class AnnotationReport:
    """What validation found: counts per problem kind, plus a few examples ``(annotation id, problem)``."""

    images: int = 0
    annotations: int = 0
    crowd: int = 0
    empty_images: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    examples: list[tuple[Any, str]] = field(default_factory=list)

    def add(self, kind: str, ann_id: Any) -> None:
        self.counts[kind] += 1
        if len(self.examples) < 5:
            self.examples.append((ann_id, kind))

    @property
    def num_problems(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line, e.g. ``"3 annotation problems: unknown_category 1, degenerate_box 2 (e.g. id 7: ...)"``."""
        found = ", ".join(f"{kind} {self.counts[kind]}" for kind in PROBLEMS if self.counts[kind])
        examples = "; ".join(f"id {ann_id}: {kind}" for ann_id, kind in self.examples)
        text = f"{self.num_problems} annotation problems: {found} (e.g. {examples})" if found else "no problems"
        return f"{text}; {self.annotations} annotations kept on {self.images} images, {self.empty_images} empty"


def _load_coco(ann_file: Path) -> COCO:
    """The annotation file as a pycocotools ``COCO``, with ``area`` / ``iscrowd`` defaults that COCOeval needs."""
    try:
        data = json.loads(ann_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise AnnotationError(f"{ann_file}: cannot read COCO json ({err})") from None
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if missing:
        raise AnnotationError(f"{ann_file}: not a COCO instances file, no list {missing} (see cocodataset.org)")
    for i, image in enumerate(data["images"]):
        lacking = [key for key in ("id", "file_name", "width", "height") if key not in image]
        if lacking:
            raise AnnotationError(f"{ann_file}: image #{i} has no {lacking}")
    for i, ann in enumerate(data["annotations"]):
        if "id" not in ann:
            raise AnnotationError(f"{ann_file}: annotation #{i} has no 'id'")
        ann.setdefault("iscrowd", 0)
        bbox = ann.get("bbox")
        if "area" not in ann and isinstance(bbox, list) and len(bbox) == 4:
            ann["area"] = float(bbox[2]) * float(bbox[3])
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def _segmentation_ok(segm: Any, height: int, width: int) -> bool:
    if isinstance(segm, list):
        return bool(segm) and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segm)
    if isinstance(segm, dict):
        return "counts" in segm and list(segm.get("size", ())) == [height, width]
    return False


def _check_annotation(
    ann: dict[str, Any], image: dict[str, Any] | None, cat_ids: set[int], with_masks: bool
) -> tuple[str | None, list[float] | None]:
    """``(problem or None, xyxy box clipped to the image or None if dropped)``."""
    if image is None:
        return "unknown_image", None
    if ann.get("category_id") not in cat_ids:
        return "unknown_category", None
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        return "degenerate_box", None
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return "degenerate_box", None
    if with_masks and not _segmentation_ok(ann.get("segmentation"), image["height"], image["width"]):
        return "bad_segmentation", None
    width, height = image["width"], image["height"]
    box = [min(max(x, 0.0), width), min(max(y, 0.0), height), min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)]
    if box[2] <= box[0] or box[3] <= box[1]:
        return "outside_image", None
    overshoot = max(-x, -y, x + w - width, y + h - height)
    return ("clipped_box" if overshoot > CLIP_TOLERANCE else None), box


class CocoDetection(Dataset):
    """A COCO instances json + image folder as ``(image, target)`` pairs for torchvision's R-CNNs.

    ``image`` is a ``tv_tensors.Image (3, H, W)`` uint8 (float in [0, 1] after :func:`detection_transforms`);
    ``target`` has ``boxes`` (``tv_tensors.BoundingBoxes (K, 4)``, XYXY pixels), ``labels (K,)`` int64 in
    ``1..num_classes-1`` (categories sorted by id; 0 is background), ``masks`` (``tv_tensors.Mask (K, H, W)``
    uint8, with ``with_masks``) and ``image_id`` (the json's id).

    Args:
        images_dir: folder the images' ``file_name`` paths are relative to.
        ann_file: COCO ``instances_*.json``.
        transforms: called as ``transforms(image, target)`` (torchvision transforms v2).
        with_masks: decode instance masks (Mask R-CNN); also checks the segmentations.
        strict: raise :class:`AnnotationError` on any problem instead of a counted warning (empty images are
            valid COCO and only warned about).
        drop_empty: leave out images without usable annotations.
        on_error: an image file that cannot be read (missing, damaged, above ``max_pixels``) is reported with a
            running count and, with ``"next"`` (training), replaced by the next image; with ``"skip"``
            (evaluation) the item is ``(None, target)``, so that evaluation leaves it out and counts it.
        max_pixels: the :func:`~botnet.data.load_image` pixel limit.
    """

    def __init__(
        self,
        images_dir: str | Path,
        ann_file: str | Path,
        transforms: Callable[..., Any] | None = None,
        with_masks: bool = True,
        strict: bool = False,
        drop_empty: bool = False,
        on_error: str = "next",
        max_pixels: float | None = MAX_PIXELS,
    ) -> None:
        if on_error not in ("next", "skip"):
            raise ValueError(f"on_error must be 'next' or 'skip', not {on_error!r}")
        self.on_error = on_error
        self.max_pixels = max_pixels
        self.unreadable = UnreadableLog()
        self.images_dir = Path(images_dir)
        self.ann_file = Path(ann_file)
        self.transforms = transforms
        self.with_masks = with_masks
        self.coco = _load_coco(self.ann_file)
        categories = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        self.cat_ids: list[int] = [c["id"] for c in categories]
        self._label_of = {cat_id: label for label, cat_id in enumerate(self.cat_ids, start=1)}
        self.categories: list[str] = [str(c.get("name", c["id"])) for c in categories]
        self.report, self._anns = self._validate()
        if strict and self.report.num_problems:
            raise AnnotationError(f"{self.ann_file}: {self.report.summary()}")
        if self.report.num_problems or self.report.empty_images:
            fate = "dropped" if drop_empty else "kept as negatives"
            warnings.warn(f"{self.ann_file}: {self.report.summary()} ({fate})", stacklevel=2)
        ids = sorted(self.coco.imgs)
        self.image_ids: list[int] = [i for i in ids if self._anns[i]] if drop_empty else ids

    @property
    def num_classes(self) -> int:
        """Categories + background."""
        return len(self.cat_ids) + 1

    def _validate(self) -> tuple[AnnotationReport, dict[int, list[tuple[dict[str, Any], list[float]]]]]:
        report = AnnotationReport(images=len(self.coco.imgs))
        kept: dict[int, list[tuple[dict[str, Any], list[float]]]] = {i: [] for i in self.coco.imgs}
        cat_ids = set(self.cat_ids)
        for ann in self.coco.dataset["annotations"]:
            image = self.coco.imgs.get(ann.get("image_id"))
            problem, box = _check_annotation(ann, image, cat_ids, self.with_masks)
            if problem is not None:
                report.add(problem, ann["id"])
            if box is None:
                continue
            if ann["iscrowd"]:
                report.crowd += 1
                continue
            kept[ann["image_id"]].append((ann, box))
            report.annotations += 1
        report.empty_images = sum(not anns for anns in kept.values())
        return report, kept

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_image(self, image_id: int) -> tv_tensors.Image:
        """The image file as ``(3, H, W)`` uint8 RGB; ``AnnotationError`` if its size disagrees with the json."""
        info = self.coco.imgs[image_id]
        path = self.images_dir / info["file_name"]
        image = pil_to_tensor(load_image(path, "RGB", self.max_pixels))
        if tuple(image.shape[-2:]) != (info["height"], info["width"]):
            raise AnnotationError(
                f"{path} is {image.shape[-1]}x{image.shape[-2]} but {self.ann_file.name} says "
                f"{info['width']}x{info['height']} (image id {image_id}); boxes would not fit"
            )
        return tv_tensors.Image(image)

    def target(self, image_id: int) -> Target:
        """The checked annotations of one image (see the class docstring)."""
        info = self.coco.imgs[image_id]
        canvas = (info["height"], info["width"])
        anns = self._anns[image_id]
        boxes = torch.tensor([box for _, box in anns], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self._label_of[ann["category_id"]] for ann, _ in anns], dtype=torch.int64)
        target: Target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=canvas),
            "labels": labels,
            "image_id": image_id,
        }
        if self.with_masks:
            masks = np.stack([self.coco.annToMask(ann) for ann, _ in anns]) if anns else np.zeros((0, *canvas))
            target["masks"] = tv_tensors.Mask(torch.from_numpy(masks.astype(np.uint8)))
        return target

    def __getitem__(self, index: int) -> tuple[Any, Target]:
        for _ in range(len(self)):
            image_id = self.image_ids[index]
            try:
                image = self.load_image(image_id)
                break
            except IMAGE_ERRORS as err:
                if isinstance(err, AnnotationError):
                    raise
                self.unreadable.report(str(self.images_dir / self.coco.imgs[image_id]["file_name"]), err)
                if self.on_error == "skip":
                    return None, {"image_id": image_id}
                index = (index + 1) % len(self)
        else:
            raise RuntimeError(f"no image of {self.ann_file} can be read from {self.images_dir}")
        target = self.target(image_id)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def detection_transforms(
    train: bool, hflip: float = 0.5, scale_jitter: tuple[float, float] | None = None, size: int = 1024
) -> v2.Compose:
    """Images to float in [0, 1]; for training also large-scale jitter and a horizontal flip, then boxes that
    became empty are removed with their labels and masks.

    Args:
        train: add the training augmentation (and the box sanitising).
        hflip: probability of a horizontal flip (0 for objects that mirroring changes, such as the demo's digits).
        scale_jitter: ``(low, high)``: large-scale jitter as the paper trains with (0.8, 1.25 at 1024): the image
            is resized to fit ``size x size`` times a scale drawn from ``[low, high]`` (torchvision's
            ``ScaleJitter``), then cropped to ``size x size`` at a random place (``RandomCrop``; a smaller image is
            zero-padded first, so it lands at a random place in the square); boxes and masks follow the image,
            boxes are clipped to the crop.
        size: the jitter's square output side, the detector's ``image_size``.

    Resizing to the detector's size and normalisation happen inside the detector (torchvision's
    ``GeneralizedRCNNTransform``).
    """
    steps: list[v2.Transform] = []
    if train and scale_jitter is not None:
        steps += [v2.ScaleJitter((size, size), scale_range=scale_jitter), v2.RandomCrop(size, pad_if_needed=True)]
    if train and hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if train:
        steps.append(v2.SanitizeBoundingBoxes())
    return v2.Compose(steps)


def collate(batch: list[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
    """Detection batches are lists (images differ in size): ``[(img, tgt), ...]`` -> ``([img, ...], [tgt, ...])``."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def coco_split(root: str | Path, split: str) -> tuple[Path, Path]:
    """COCO's folder layout: ``(root/split, root/annotations/instances_{split}.json)``, e.g. ``split="val2017"``."""
    root = Path(root)
    return root / split, root / "annotations" / f"instances_{split}.json"
