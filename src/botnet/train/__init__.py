"""Training, evaluation and prediction with PyTorch Lightning: ``ImageClassifier`` (LightningModule),
``ImageDataModule`` (ImageFolder trees and the embedded ``mnist5k``), the run's callbacks, and :mod:`botnet.train.run`
(``fit`` / ``evaluate`` / ``predict``, which ``botnet train`` / ``eval`` / ``predict`` wrap)."""

from botnet.train.data import ImageDataModule, build_transform
from botnet.train.module import ImageClassifier

__all__ = ["ImageClassifier", "ImageDataModule", "build_transform"]
