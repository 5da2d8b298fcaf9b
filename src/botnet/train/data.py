"""``ImageDataModule``: an ImageFolder tree (``root/train/<class>``, ``root/val/<class>``), the official Imagenette
tree split and labelled by its csv (``imagenette:PATH[:NOISE]``), WebDataset shards (``wds:ROOT``,
:mod:`botnet.data.shards`) or ``mnist5k``, with timm / torchvision transforms, as a Lightning
``LightningDataModule``."""

from __future__ import annotations

import random
import signal
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.datasets.folder import find_classes
from torchvision.transforms import InterpolationMode, v2

from botnet.data import (
    MAX_PIXELS,
    MNIST5K,
    CheckedImageFolder,
    ImagenetteFolder,
    MNIST5k,
    channel_mode,
    eval_transform,
    is_imagenette,
    parse_imagenette,
    read_imagenette_csv,
)
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
    if is_imagenette(data):
        root, noise = parse_imagenette(data)
        return f"imagenette:{root.resolve()}:{noise}"
    return str(Path(data).resolve())


def read_class_names(data: str) -> list[str]:
    """The class names of ``data`` (``mnist5k``, ``wds:ROOT`` with train and val shards, ``imagenette:PATH[:NOISE]``:
    the synset folders its csv names, or an ImageFolder root with ``train/`` and ``val/``), checked."""
    if data == MNIST5K:
        return list(MNIST5k.classes)
    if is_imagenette(data):
        return read_imagenette_csv(*parse_imagenette(data)).classes
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


def ignore_interrupts(worker_id: int) -> None:
    """Loader-worker start: leave Ctrl-C and SIGTERM to the main process. A terminal's Ctrl-C (and a scheduler's
    SIGTERM to the process group) reaches the workers too; killed workers would crash the run before the main
    process could save its interrupt checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Python, NumPy and torch (CPU) random draws from ``seed`` inside the block, the callers' states after it."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class SeededSamples(Dataset):
    """``dataset`` indexed by ``(epoch, index)``, each sample's augmentation drawn from a seed of ``(seed, epoch,
    index)``: the same draws whichever loader worker, batch position or run loads it, so a run resumed mid-epoch
    sees exactly the augmentations of an uninterrupted one."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        with _seeded(hash((self.seed, epoch, index)) % 2**63):
            return self.dataset[index]


class ResumableSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` keys for :class:`SeededSamples`: a permutation seeded by ``(seed, epoch)``
    (Lightning calls :meth:`set_epoch`), of which the first ``skip`` keys are left out once: a run resumed
    mid-epoch goes on with the keys the epoch had left."""

    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0, skip: int = 0) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = epoch
        self.skip = skip

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.size)
        skip, self.skip = self.skip, 0
        for index in order[skip:].tolist():
            yield self.epoch, index


class ImageDataModule(pl.LightningDataModule):
    """Train / val / test loaders over ``mnist5k``, an ImageFolder tree, the Imagenette tree or WebDataset shards.

    Batches are ``(images (B, C, H, W), labels (B,))``. In evaluation batches an unreadable image has the label
    :data:`~botnet.data.SKIPPED` (and zeros as pixels): it is left out of the metrics and counted.

    ``test`` is the evaluation split ``eval_split`` (``val`` by default) with the evaluation transform. Under DDP
    Lightning shards folder and digit loaders with a ``DistributedSampler``; shards split themselves over ranks and
    workers, every sample once per epoch, and their training loader's position inside an epoch is saved in
    checkpoints (:class:`~botnet.data.shards.ShardLoader`).

    Args:
        data: ``"mnist5k"``, ``"wds:ROOT"`` (a shard root with ``train`` and ``val`` shards),
            ``"imagenette:PATH[:NOISE]"`` (the official Imagenette tree: split by its csv's ``is_valid``, labelled by
            its ``noisy_labels_{NOISE}`` column) or the root of an ImageFolder tree with ``train/`` and ``val/``.
        img_size: side of the square model input.
        in_chans: 1 (images converted to grayscale) or 3 (RGB).
        mean, std: normalisation, one value per channel (the model's ``pretrained_cfg``).
        batch_size: per device.
        workers: loader processes per device (they ignore Ctrl-C / SIGTERM: the main process decides).
        eval_split: the split ``test`` uses.
        seed: the training order and augmentations are a function of ``(seed, epoch, index)``, so an interrupted
            run resumes mid-epoch exactly (:class:`ResumableSampler`, :class:`SeededSamples`; shards: their own
            seeded order and :class:`~botnet.data.shards.ShardLoader`'s saved position).
        max_pixels: the image loader's pixel limit (larger files are skipped as unreadable).
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
        max_pixels: float | None = MAX_PIXELS,
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
        self.max_pixels = max_pixels
        self.transform = transform
        self.datasets: dict[str, Dataset] = {}
        self.resume = (0, 0)  # (epoch, training batches done) of an interrupted epoch, from the checkpoint

    def _dataset(self, split: str, train: bool) -> Dataset:
        transform = build_transform(train, self.img_size, **self.norm, **self.transform)
        if self.data == MNIST5K:
            dataset: Dataset = MNIST5k(split, self.mode, transform)
        elif is_shards(self.data):
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
        else:
            on_error = "next" if train else "skip"  # evaluation counts each image once, readable or not
            if is_imagenette(self.data):
                root, noise = parse_imagenette(self.data)
                dataset = ImagenetteFolder(root, split, noise, self.mode, transform, on_error, self.max_pixels)
            else:
                dataset = CheckedImageFolder(Path(self.data) / split, self.mode, transform, on_error, self.max_pixels)
        return SeededSamples(dataset, self.seed) if train else dataset

    def setup(self, stage: str) -> None:
        """Build the split datasets ``stage`` needs (folders are scanned here, not at construction)."""
        if stage == "fit":
            self.datasets["train"] = self._dataset("train", train=True)
            self.datasets["val"] = self._dataset("val", train=False)
        elif stage == "validate":
            self.datasets["val"] = self._dataset("val", train=False)
        elif stage == "test":
            self.datasets["test"] = self._dataset(self.eval_split, train=False)

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: the epoch and how many of its training batches are done."""
        if self.trainer is None:
            return {}
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.completed
        return {"epoch": self.trainer.current_epoch, "train_batches_done": done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """On resume (before the loaders are built): an epoch stopped part-way goes on where it stopped."""
        self.resume = (state_dict.get("epoch", 0), state_dict.get("train_batches_done", 0))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        if isinstance(dataset, ShardDataset):
            # Lightning warns that workers may repeat an IterableDataset's samples; these split it exactly.
            warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
            epoch = self.trainer.current_epoch if self.trainer is not None else 0
            return ShardLoader(dataset, num_workers=self.workers, epoch=epoch, worker_init_fn=ignore_interrupts)
        drop_last = shuffle and len(dataset) > self.batch_size  # no ragged last batch (mixup needs even ones)
        sampler = None
        if shuffle:
            batches = len(dataset) // self.batch_size if drop_last else -(-len(dataset) // self.batch_size)
            epoch, done = self.resume if self.resume[1] < batches else (0, 0)  # a finished epoch: the next anew
            sampler = ResumableSampler(len(dataset), seed=self.seed, epoch=epoch, skip=done * self.batch_size)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.workers,
            worker_init_fn=ignore_interrupts,
            drop_last=drop_last,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
