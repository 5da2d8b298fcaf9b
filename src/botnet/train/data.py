"""``ImageDataModule``: an ImageFolder tree (``root/train/<class>``, ``root/val/<class>``), WebDataset shards
(``wds:ROOT``, :mod:`botnet.data.shards`) or ``mnist5k``, with timm / torchvision transforms, as a Lightning
``LightningDataModule``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import find_classes
from torchvision.transforms import InterpolationMode, v2

from botnet.data import MNIST5K, CheckedImageFolder, MNIST5k, channel_mode, eval_transform
from botnet.data.shards import ShardDataset, ShardLoader, is_shards, read_manifest, shard_root

AUGMENTS = ("rrc", "affine")


def data_defaults(data: str) -> dict[str, Any]:
    """Per-source defaults of the data flags: digits are small, grey, centred and must not be flipped or cropped."""
    if data == MNIST5K:
        return dict(in_chans=1, img_size=64, augment="affine", crop_pct=1.0)
    return dict(in_chans=3, augment="rrc")  # input size and crop fraction: the model's


def resolve_data(data: str) -> str:
    """``data`` with a local folder made absolute (``wds:`` kept, URLs and ``mnist5k`` as they are), so that a run's
    recorded data set can be found from any working directory."""
    if data == MNIST5K or (is_shards(data) and "://" in data):
        return data
    if is_shards(data):
        return f"wds:{Path(shard_root(data)).resolve()}"
    return str(Path(data).resolve())


def read_class_names(data: str) -> list[str]:
    """The class names of ``data`` (``mnist5k``, ``wds:ROOT`` with train and val shards, or an ImageFolder root
    with ``train/`` and ``val/``), checked."""
    if data == MNIST5K:
        return list(MNIST5k.classes)
    if is_shards(data):
        manifest = read_manifest(shard_root(data))
        for split in ("train", "val"):
            manifest.shards(split)
        return manifest.classes
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} not found (use --data {MNIST5K} or an ImageFolder root)")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(
                f"{root} has no {split}/ folder: expected {root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg"
            )
    try:
        train, _ = find_classes(str(root / "train"))
        val, _ = find_classes(str(root / "val"))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err} (expected one folder of images per class)") from None
    if train != val:
        raise ValueError(f"{root}/train and {root}/val have different class folders: {sorted(set(train) ^ set(val))}")
    return train


def build_transform(
    train: bool,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
    crop_pct: float | None = None,
    augment: str = "rrc",
    scale: Sequence[float] = (0.08, 1.0),
    hflip: float = 0.5,
    auto_augment: str | None = None,
    re_prob: float = 0.0,
) -> Any:
    """PIL image -> normalised tensor ``(C, img_size, img_size)``.

    Evaluation: :func:`botnet.data.eval_transform` (timm's resize to ``img_size / crop_pct`` + centre crop, the
    preprocessing of ``botnet predict`` too). Training with ``augment="rrc"``: timm's random-resized crop, flip,
    optional RandAugment (``auto_augment="rand-m9-mstd0.5"``) and random erasing; with ``"affine"``: resize + a
    small random rotation / shift / zoom (torchvision v2), for digits and characters that crops and flips would change.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; use one of {AUGMENTS}")
    if not train:
        cfg = dict(input_size=(len(mean), img_size, img_size), mean=mean, std=std, crop_pct=crop_pct)
        return eval_transform({**cfg, "interpolation": interpolation})
    common = dict(mean=tuple(mean), std=tuple(std), interpolation=interpolation)
    if augment == "rrc":
        return create_transform(
            img_size,
            is_training=True,
            crop_pct=crop_pct,
            scale=tuple(scale),
            hflip=hflip,
            auto_augment=auto_augment,
            re_prob=re_prob,
            **common,
        )
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize((img_size, img_size), interpolation=InterpolationMode(interpolation), antialias=True),
            v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


class ImageDataModule(pl.LightningDataModule):
    """Train / val / test loaders over ``mnist5k``, an ImageFolder tree or WebDataset shards.

    Batches are ``(images (B, C, H, W), labels (B,))``.

    ``test`` is the evaluation split ``eval_split`` (``val`` by default) with the evaluation transform. Under DDP
    Lightning shards folder and digit loaders with a ``DistributedSampler``; shards split themselves over ranks and
    workers, every sample once per epoch, and their training loader's position inside an epoch is saved in
    checkpoints (:class:`~botnet.data.shards.ShardLoader`).

    Args:
        data: ``"mnist5k"``, ``"wds:ROOT"`` (a shard root with ``train`` and ``val`` shards) or the root of an
            ImageFolder tree with ``train/`` and ``val/``.
        img_size: side of the square model input.
        in_chans: 1 (images converted to grayscale) or 3 (RGB).
        mean, std: normalisation, one value per channel (the model's ``pretrained_cfg``).
        batch_size: per device.
        workers: loader processes per device.
        eval_split: the split ``test`` uses.
        seed: the shards' shuffling seed (with the epoch).
        **transform: :func:`build_transform` options (``interpolation``, ``crop_pct``, ``augment``, ``scale``,
            ``hflip``, ``auto_augment``, ``re_prob``).
    """

    def __init__(
        self,
        data: str,
        img_size: int,
        in_chans: int,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int = 64,
        workers: int = 0,
        eval_split: str = "val",
        seed: int = 0,
        **transform: Any,
    ) -> None:
        super().__init__()
        self.data = data
        self.img_size = img_size
        self.mode = channel_mode(in_chans)
        self.norm = dict(mean=mean, std=std)
        self.batch_size = batch_size
        self.workers = workers
        self.eval_split = eval_split
        self.seed = seed
        self.transform = transform
        self.datasets: dict[str, Dataset] = {}

    def _dataset(self, split: str, train: bool) -> Dataset:
        transform = build_transform(train, self.img_size, **self.norm, **self.transform)
        if self.data == MNIST5K:
            return MNIST5k(split, self.mode, transform)
        if is_shards(self.data):
            return ShardDataset(
                shard_root(self.data),
                split,
                self.mode,
                transform,
                batch_size=self.batch_size,
                shuffle=train,
                drop_last=train,
                fill=train,
                seed=self.seed,
            )
        return CheckedImageFolder(Path(self.data) / split, self.mode, transform)

    def setup(self, stage: str) -> None:
        """Build the split datasets ``stage`` needs (folders are scanned here, not at construction)."""
        if stage == "fit":
            self.datasets["train"] = self._dataset("train", train=True)
            self.datasets["val"] = self._dataset("val", train=False)
        elif stage == "validate":
            self.datasets["val"] = self._dataset("val", train=False)
        elif stage == "test":
            self.datasets["test"] = self._dataset(self.eval_split, train=False)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        if isinstance(dataset, ShardDataset):
            # Lightning warns that workers may repeat an IterableDataset's samples; these split it exactly.
            warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
            epoch = self.trainer.current_epoch if self.trainer is not None else 0
            return ShardLoader(dataset, num_workers=self.workers, epoch=epoch)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.workers,
            drop_last=shuffle and len(dataset) > self.batch_size,  # no ragged last batch (mixup needs even ones)
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
