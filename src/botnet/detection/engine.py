"""Lightning wrappers: the detector as a ``LightningModule`` (train / COCO-validate / predict) and COCO data.

``Trainer.fit`` trains (SGD with momentum as the paper, or another timm optimizer; linear warm-up then cosine
decay), ``Trainer.validate`` scores box and mask AP with COCOeval (logged as ``val/bbox_AP``, ``val/segm_AP``,
...), ``Trainer.predict`` returns the raw detections. Checkpoints carry the detector's name, arguments and
category names, so ``DetectionModule.load_from_checkpoint(path)`` rebuilds it with nothing else.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from timm.optim import create_optimizer_v2
from torch.utils.data import DataLoader

from botnet import checkpoint
from botnet.data import MAX_PIXELS
from botnet.detection.builders import create_detector
from botnet.detection.data import CocoDetection, collate, detection_transforms
from botnet.detection.evaluation import CocoEvaluator
from botnet.train.callbacks import PretrainedModule
from botnet.train.data import ignore_interrupts

Batch = tuple[list[torch.Tensor], list[dict[str, Any]]]
WARMUP_FRACTION = 0.1  # warm-up never takes more than this share of a run


def warmup_cosine(total: int, warmup_steps: int) -> Callable[[int], float]:
    """LR factor of step ``0..total``: linear warm-up from ``1e-3`` then cosine decay to 0 at ``total``.

    The warm-up lasts ``min(warmup_steps, WARMUP_FRACTION * total)`` steps, so a short run still decays
    (a 100-step warm-up in a 100-step run would end at the peak LR, never annealed).
    """
    warmup = min(warmup_steps, int(WARMUP_FRACTION * total))

    def factor(step: int) -> float:
        if step < warmup:
            return 1e-3 + (1 - 1e-3) * step / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor


class DetectionModule(PretrainedModule):
    """A :func:`~botnet.detection.create_detector` model with its optimisation and COCO evaluation.

    Batches are ``(images, targets)`` lists from :func:`~botnet.detection.data.collate`: ``images`` are
    ``(3, H, W)`` floats in [0, 1], ``targets`` dicts as :class:`~botnet.detection.data.CocoDetection` makes.

    Args:
        detector: a name from :func:`~botnet.detection.list_detectors`.
        num_classes: categories + background.
        categories: category names of labels ``1..K`` (for drawing).
        cat_ids: COCO category ids of labels ``1..K`` (for results json).
        lr: peak learning rate.
        opt: timm optimizer name: ``"momentum"`` (SGD with momentum, the paper's), ``"adamw"``, ``"sgd"``
            (Nesterov), ... as ``botnet train --opt``.
        momentum: SGD momentum.
        weight_decay: L2 penalty (SGD) or decoupled decay (AdamW); timm exempts norm layers and biases.
        warmup_steps: linear warm-up from ``lr / 1000``, at most a tenth of the run (:func:`warmup_cosine`).
        detector_kwargs: further :func:`~botnet.detection.create_detector` arguments.
        backbone_weights: local classifier state_dict to start the backbone from (only when training starts).
    """

    def __init__(
        self,
        detector: str,
        num_classes: int,
        categories: list[str] | None = None,
        cat_ids: list[int] | None = None,
        lr: float = 0.02,
        opt: str = "momentum",
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        warmup_steps: int = 100,
        detector_kwargs: dict[str, Any] | None = None,
        backbone_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        # Not a hyperparameter: a checkpoint holds the trained weights, and must not need the file again.
        self.save_hyperparameters(ignore=["backbone_weights"])
        self.model = create_detector(
            detector, num_classes, backbone_weights=backbone_weights, **(detector_kwargs or {})
        )
        self.categories = categories or [str(i) for i in range(1, num_classes)]
        self.cat_ids = cat_ids or list(range(1, num_classes))
        self.evaluator: CocoEvaluator | None = None
        self.coco_metrics: dict[str, float] = {}
        self.validated_step = -1  # global step of the latest COCO validation
        self.skipped = 0  # unreadable images left out of the latest validation

    def write_pretrained(self, directory: Path, weights: dict[str, torch.Tensor], extra: dict[str, Any]) -> Path:
        """``model.safetensors`` + ``config.json`` (detector name, classes, arguments, categories, ``extra``)."""
        config = {
            "architecture": self.hparams.detector,
            "task": "detection",
            "num_classes": self.hparams.num_classes,
            "detector_kwargs": self.hparams.detector_kwargs or {},
            "extra": {"categories": self.categories, "cat_ids": self.cat_ids, **extra},
        }
        return checkpoint.save_pretrained_files(directory, weights, config)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> DetectionModule:
        """Rebuild from a folder written by :meth:`save_pretrained` (``botnet detect train --out``), or from a
        Lightning ``.ckpt`` of a detection run; :class:`~botnet.checkpoint.CheckpointError` if it is neither."""
        path = Path(path)
        if path.suffix == ".ckpt":
            saved = checkpoint.read_checkpoint(path)
            hparams = saved.get("hyper_parameters")
            if not isinstance(hparams, dict) or "detector" not in hparams:
                raise checkpoint.CheckpointError(f"{path} is not a checkpoint of botnet detect train")
            module = cls(**hparams)
            checkpoint.load_weights(module, saved.get("state_dict", {}), trained_for=hparams["detector"])
            return module
        config = checkpoint.read_config(path)
        if config.get("task") != "detection":
            raise checkpoint.CheckpointError(
                f"{path} holds a {config['architecture']} classifier, not a detector (use botnet eval / predict)"
            )
        extra = config.get("extra", {})
        module = cls(
            config["architecture"],
            config["num_classes"],
            categories=extra.get("categories"),
            cat_ids=extra.get("cat_ids"),
            detector_kwargs=config.get("detector_kwargs"),
        )
        weights = checkpoint.pretrained_weights_path(path.parent if path.is_file() else path)
        checkpoint.load_weights(module.model, weights, trained_for=config["architecture"])
        return module

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, Any]] | None = None) -> Any:
        """Training mode: loss dict; eval mode: per-image detections (torchvision's R-CNN API)."""
        return self.model(images, targets)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            parts = ", ".join(f"{k} {v.item():.3g}" for k, v in losses.items())
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            raise ValueError(
                f"training loss is {loss.item()} at step {self.global_step} ({parts}; lr {lr:.3g}): "
                f"the run diverged, try a lower --lr (was {self.hparams.lr:g}) or a longer --warmup-steps"
            )
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=len(images))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def on_validation_epoch_start(self) -> None:
        dataset = self.trainer.val_dataloaders.dataset
        if not isinstance(dataset, CocoDetection):
            raise TypeError(f"validation needs a CocoDetection dataset (for its ground truth), got {type(dataset)}")
        iou_types = ("bbox", "segm") if self.model.roi_heads.has_mask() else ("bbox",)
        self.evaluator = CocoEvaluator(dataset.coco, dataset.cat_ids, iou_types)
        self.skipped = 0

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Score the readable images of the batch; unreadable ones (``None``) are counted in ``self.skipped``."""
        readable = [(image, target) for image, target in zip(*batch, strict=True) if image is not None]
        self.skipped += len(batch[0]) - len(readable)
        assert self.evaluator is not None
        if readable:
            images, targets = map(list, zip(*readable, strict=True))
            self.evaluator.update(self.model(images), [t["image_id"] for t in targets])

    def on_validation_epoch_end(self) -> None:
        assert self.evaluator is not None
        self.evaluator.synchronize()  # every rank scores all images, so the logged AP agrees across ranks
        self.coco_metrics = self.evaluator.compute()
        self.validated_step = self.global_step
        self.log_dict({f"val/{k}": v for k, v in self.coco_metrics.items()})

    def predict_step(self, batch: tuple[list[torch.Tensor], list[Any]], batch_idx: int) -> list[dict[str, Any]]:
        """``(images, keys)`` -> ``[{**detections, "key": key}, ...]`` (``key``: e.g. the file's index)."""
        images, keys = batch
        if not images:
            return []
        return [{**output, "key": key} for output, key in zip(self.model(images), keys, strict=True)]

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = create_optimizer_v2(
            self.model, opt=hp.opt, lr=hp.lr, weight_decay=hp.weight_decay, momentum=hp.momentum
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        factor = warmup_cosine(total, self.hparams.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class CocoDataModule(L.LightningDataModule):
    """COCO train / val splits as detection dataloaders; the json files are read in :meth:`setup`.

    Args:
        train: ``(images_dir, ann_file)`` of the training split (see :func:`~botnet.detection.data.coco_split`).
        val: the same for validation, or ``None``.
        batch_size: images per batch.
        num_workers: dataloader workers.
        with_masks: load instance masks (Mask R-CNN).
        strict: annotation problems raise instead of a counted warning.
        max_pixels: the image loader's pixel limit. Unreadable images are replaced by the next one in training,
            left out (and counted) in validation.
        hflip: probability of a horizontal flip of a training image.
        scale_jitter: ``(low, high)`` large-scale jitter of training images to ``image_size`` squares, or ``None``
            (:func:`~botnet.detection.data.detection_transforms`).
        image_size: the detector's input side, the jitter's output size.
    """

    def __init__(
        self,
        train: tuple[str | Path, str | Path] | None,
        val: tuple[str | Path, str | Path] | None = None,
        batch_size: int = 2,
        num_workers: int = 0,
        with_masks: bool = True,
        strict: bool = False,
        max_pixels: float | None = MAX_PIXELS,
        hflip: float = 0.5,
        scale_jitter: tuple[float, float] | None = None,
        image_size: int = 1024,
    ) -> None:
        super().__init__()
        if train is None and val is None:
            raise ValueError("CocoDataModule needs a train or a val split")
        self.splits = {"train": train, "val": val}
        self.options = dict(with_masks=with_masks, strict=strict, max_pixels=max_pixels)
        self.train_set: CocoDetection | None = None
        self.val_set: CocoDetection | None = None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = dict(hflip=hflip, scale_jitter=scale_jitter, size=image_size)

    def setup(self, stage: str = "fit") -> None:
        """Read and check the annotation files (once)."""
        if self.train_set is None and self.splits["train"] is not None and stage == "fit":
            train = self.splits["train"]
            self.train_set = CocoDetection(
                *train, detection_transforms(True, **self.augment), drop_empty=True, **self.options
            )
        if self.val_set is None and self.splits["val"] is not None:
            self.val_set = CocoDetection(
                *self.splits["val"], detection_transforms(False), on_error="skip", **self.options
            )

    @property
    def reference(self) -> CocoDetection:
        """The split that defines the categories (after :meth:`setup`)."""
        self.setup("fit")
        dataset = self.train_set or self.val_set
        assert dataset is not None
        return dataset

    def _loader(self, dataset: CocoDetection | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise ValueError("this split was not given to CocoDataModule")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate,
            worker_init_fn=ignore_interrupts,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
