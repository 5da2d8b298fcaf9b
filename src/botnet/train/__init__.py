"""Training, evaluation and prediction with PyTorch Lightning: ``ImageClassifier`` (LightningModule),
``ImageDataModule`` (ImageFolder trees and the embedded ``mnist5k``), the run's callbacks, and the
``botnet train`` / ``eval`` / ``predict`` commands."""

from botnet.train.data import ImageDataModule, build_transform
from botnet.train.datasets import CheckedImageFolder, MNIST5k, load_image
from botnet.train.module import ImageClassifier

__all__ = ["CheckedImageFolder", "ImageClassifier", "ImageDataModule", "MNIST5k", "build_transform", "load_image"]
