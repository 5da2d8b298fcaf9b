"""``ImageClassifier``: a registry model trained as a Lightning ``LightningModule`` with timm's recipe parts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from torchmetrics import MetricCollection, SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from botnet.checkpoint import read_config
from botnet.data import SKIPPED
from botnet.models import ResNet, create_model
from botnet.train.callbacks import PretrainedModule

SCHEDULES = ("cosine", "poly", "none")


class ImageClassifier(PretrainedModule):
    """Classify images ``(B, in_chans, H, W)`` into ``num_classes`` with a :func:`botnet.create_model` network.

    Training: cross-entropy with label smoothing, or timm's mixup / cutmix with soft targets; a timm optimizer
    (``adamw``, ``sgd`` = SGD with Nesterov momentum, ``lamb``, ...) and a per-step timm schedule (cosine or poly
    decay after a linear warmup). Validation and test log top-1 / top-5 accuracy (torchmetrics, synchronised
    across devices); test also accumulates a confusion matrix.

    Args:
        model_name: a registered model, e.g. ``"botnet26"``.
        num_classes: classifier outputs.
        in_chans: input channels.
        model_kwargs: :func:`botnet.create_model` overrides, e.g. ``dict(img_size=64, attention="c4,c5")``.
        class_names: one name per class (default: the class indices).
        pretrained_cfg: updates to the model's ``pretrained_cfg`` (e.g. ``crop_pct``), saved in ``config.json`` so
            that evaluation and prediction preprocess images the way training did.
        opt: timm optimizer name.
        lr: peak learning rate.
        weight_decay: decoupled (AdamW, LAMB) or L2 (SGD) weight decay; timm exempts biases and norms.
        momentum: SGD momentum.
        layer_decay: layer-wise learning-rate decay (timm, over the model's ``group_matcher``): the classifier
            learns at ``lr``, each block before it at ``layer_decay`` times the next one's rate; ``None``: off.
        sched: ``"cosine"``, ``"poly"`` or ``"none"`` (constant).
        warmup_epochs: linear warmup from ``warmup_lr``.
        warmup_lr: learning rate at the first step.
        min_lr: learning rate at the end of the decay.
        smoothing: label smoothing.
        mixup: mixup alpha (0 = off).
        cutmix: cutmix alpha (0 = off).
        channels_last: keep the model's weights and the input images in ``channels_last`` memory format.
        model: an already built network to train or evaluate instead of building one from ``model_name`` (not a
            hyperparameter: checkpoints rebuild it from the other arguments).
    """

    def __init__(
        self,
        model_name: str,
        num_classes: int,
        in_chans: int = 3,
        model_kwargs: dict[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
        pretrained_cfg: dict[str, Any] | None = None,
        opt: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        momentum: float = 0.9,
        layer_decay: float | None = None,
        sched: str = "cosine",
        warmup_epochs: int = 1,
        warmup_lr: float = 1e-5,
        min_lr: float = 1e-5,
        smoothing: float = 0.1,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        channels_last: bool = False,
        model: ResNet | None = None,
    ) -> None:
        super().__init__()
        if sched not in SCHEDULES:
            raise ValueError(f"unknown schedule {sched!r}; use one of {SCHEDULES}")
        self.save_hyperparameters(ignore=["model"])
        if model is None:
            model = create_model(model_name, num_classes=num_classes, in_chans=in_chans, **(model_kwargs or {}))
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.model.pretrained_cfg.update(pretrained_cfg or {})
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")

        self.mixup = None
        if mixup > 0 or cutmix > 0:
            self.mixup = Mixup(mixup, cutmix, label_smoothing=smoothing, num_classes=num_classes)
            self.train_loss: nn.Module = SoftTargetCrossEntropy()
        else:
            self.train_loss = nn.CrossEntropyLoss(label_smoothing=smoothing)
        self.eval_loss = nn.CrossEntropyLoss()
        metrics = MetricCollection(
            {
                "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
                "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
            }
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.confusion = MulticlassConfusionMatrix(num_classes)
        self.skipped = SumMetric()  # unreadable images met in evaluation (synchronised across devices)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> ImageClassifier:
        """Rebuild from a ``save_pretrained`` directory (``config.json`` + ``model.safetensors``; no pickle)."""
        model = ResNet.from_pretrained(directory)
        return cls(
            model.model_name,
            model.num_classes,
            model.in_chans,
            class_names=read_config(directory).get("extra", {}).get("class_names"),
            model=model,
        )

    def write_pretrained(self, directory: Path, weights: dict[str, torch.Tensor], extra: dict[str, Any]) -> Path:
        """The network as a :meth:`botnet.ResNet.save_pretrained` folder, with the class names and ``extra``."""
        model = type(self.model)(**self.model.model_args, pretrained_cfg=self.model.pretrained_cfg)
        model.load_state_dict(weights)
        return model.save_pretrained(directory, extra={"class_names": self.class_names, **extra})

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` -> logits ``(B, num_classes)``."""
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)  # targets become soft: (B, num_classes)
        loss = self.train_loss(self(images), targets)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(images))
        return loss

    def on_validation_epoch_start(self) -> None:
        self.skipped.reset()

    def on_test_epoch_start(self) -> None:
        self.skipped.reset()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        logits, targets = self._evaluate(batch, self.test_metrics, "test")
        self.confusion.update(logits, targets)

    def _evaluate(
        self, batch: tuple[torch.Tensor, torch.Tensor], metrics: MetricCollection, stage: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels of the readable images; unreadable ones (label ``SKIPPED``) are counted instead."""
        images, targets = batch
        readable = targets != SKIPPED
        self.skipped.update((~readable).sum())
        images, targets = images[readable], targets[readable]
        if not len(targets):
            return images.new_zeros(0, self.model.num_classes), targets
        logits = self(images)
        self.log(f"{stage}/loss", self.eval_loss(logits, targets), sync_dist=True, batch_size=len(images))
        metrics.update(logits, targets)
        self.log_dict(metrics, prog_bar=stage == "val", batch_size=len(images))
        return logits, targets

    def predict_step(self, batch: tuple[torch.Tensor, Any], batch_idx: int) -> tuple[torch.Tensor, Any]:
        """``(images, per-item info)`` -> ``(class probabilities (B, num_classes), the same per-item info)``; a batch
        with no readable image (``B = 0``) gives ``(0, num_classes)``."""
        images, info = batch
        if not len(images):
            return images.new_zeros(0, self.model.num_classes), info
        return self(images).softmax(dim=-1), info

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = create_optimizer_v2(
            self.model,
            opt=hp.opt,
            lr=hp.lr,
            weight_decay=hp.weight_decay,
            momentum=hp.momentum,
            layer_decay=hp.layer_decay,
        )
        if hp.sched == "none":
            return optimizer
        epochs = max(1, self.trainer.max_epochs or 1)
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=hp.sched,
            num_epochs=epochs,
            warmup_epochs=hp.warmup_epochs,
            warmup_lr=hp.warmup_lr,
            min_lr=hp.min_lr,
            step_on_epochs=False,
            updates_per_epoch=max(1, int(self.trainer.estimated_stepping_batches) // epochs),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """timm schedulers are driven by the optimizer-step count (Lightning calls this after each step)."""
        scheduler.step_update(num_updates=self.global_step)
